"""The checkpoint schedule is data: Pythia's published steps, resume steps, config plumbing."""

from circuits.train import schedule


def test_pythia_schedule():
  steps = schedule.permanent_steps(143000, log_until=512, every=1000)
  assert steps[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
  assert steps[11:14] == [1000, 2000, 3000] and steps[-1] == 143000
  assert len(steps) == 154  # Pythia publishes 154 checkpoints


def test_short_runs_and_options():
  assert schedule.permanent_steps(5, log_until=512, every=1000) == [0, 1, 2, 4, 5]
  assert schedule.permanent_steps(10, log_spaced=False, every=4) == [0, 4, 8, 10]
  assert schedule.permanent_steps(20, log_until=4, every=0) == [0, 1, 2, 4, 20]
  assert schedule.permanent_steps(0) == [0]
  assert schedule.resume_steps(10, 3) == [3, 6, 9] and schedule.resume_steps(10, 0) == []


def test_from_config():
  from configs.families import family_config

  c = family_config("pythia", "tiny")
  c.train.steps, c.checkpoint.log_until, c.checkpoint.every, c.checkpoint.resume_every = 12, 4, 8, 5
  perm, resume = schedule.from_config(c.train, c.checkpoint)
  assert perm == [0, 1, 2, 4, 8, 12] and resume == [5, 10]
