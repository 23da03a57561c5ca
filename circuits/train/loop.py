"""The training loop: `train(config, workdir) -> summary`, importable from notebooks.

The host dispatches step t, then reads step t-1's metrics (logs, NaN check), so the device never waits on
the host. A checkpoint of step s (params after s updates) is written only after step s-1's metrics were
checked, so a non-finite state is never saved. SIGTERM: the current step is checkpointed, then `train`
returns (interrupted=True) and the CLI exits 0.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np

from circuits.errors import CircuitsError
from circuits.models import ModelConfig
from circuits.rundir import METRICS_FILE, RUN_FILE, TB_DIR
from circuits.train import checkpoint as ckpt
from circuits.train import config as config_lib
from circuits.train import data as data_lib
from circuits.train import schedule as schedule_lib
from circuits.train import sharding as shd
from circuits.train import step as step_lib
from circuits.train import writers


class NonFiniteLossError(CircuitsError, RuntimeError):
  """The loss (or gradient norm) became NaN/Inf under train.nan_policy='abort'."""


class WorkdirError(CircuitsError, OSError):
  """The workdir cannot be created or written."""


@dataclasses.dataclass
class Setup:
  """Everything compiled or placed for one run config on one mesh."""
  config: Any
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  graphdef: Any
  tx: Any
  schedule: Any
  state_shardings: dict
  abstract_state: dict  # ShapeDtypeStructs with shardings
  batch_keys: tuple
  batch_sharding: Any
  probe_sharding: Any
  step: Any  # jitted (state, batch, probe) -> (state, metrics), state donated
  init: Any  # jitted () -> state

  def abstract_batch(self) -> dict:
    b, t = int(self.config.train.batch_size), int(self.config.data.seq_len)
    dt = {"loss_mask_BxT": np.float32}
    return {k: jax.ShapeDtypeStruct((b, t), dt.get(k, np.int32), sharding=self.batch_sharding)
            for k in self.batch_keys}

  def abstract_probe(self) -> dict:
    if not self.config.probe.every:
      return {}
    p = step_lib.probe_batch(self.config, self.model_cfg)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.probe_sharding) for k, v in p.items()}


def setup(config, devices=None) -> Setup:
  """Validate the config, build the mesh, shardings and the jitted step (nothing is allocated)."""
  cfg, model_cfg = config_lib.validate(config)
  mesh = shd.make_mesh(cfg.mesh, devices)
  config_lib.check_mesh(cfg, dict(mesh.shape))
  tr = cfg.train
  tx, schedule = step_lib.make_optimizer(tr), step_lib.lr_schedule(tr)
  seed = int(cfg.seed)
  graphdef, abstract_params = step_lib.abstract_model(model_cfg, seed)
  p_sh = shd.param_shardings(abstract_params, mesh)
  init_fn = functools.partial(step_lib.init_state, model_cfg, tx, seed)
  abstract = jax.eval_shape(init_fn)
  rep = shd.replicated(mesh)
  state_sh = dict(params=p_sh, opt_state=shd.tree_shardings_like(abstract["opt_state"], abstract["params"], p_sh, mesh),
                  step=rep, rng=rep, n_skipped=rep)
  keys = ("tokens_BxT", "targets_BxT", "loss_mask_BxT")
  if cfg.data.segment_mask:
    keys += ("segment_ids_BxT", "positions_BxT")
  opts = step_lib.StepOptions(diagnostics=bool(tr.diagnostics), z_loss=float(tr.z_loss), nan_policy=str(tr.nan_policy),
                              probe_every=int(cfg.probe.every), segment_mask=bool(cfg.data.segment_mask),
                              remat=str(tr.remat), microbatches=int(tr.microbatches), loss_chunk=int(tr.loss_chunk),
                              scan_layers=bool(tr.scan_layers),
                              residual_sharding=shd.batch_sharding(mesh, 3) if shd.batch_axis_size(mesh) > 1 else None)
  fn = step_lib.make_step(graphdef, model_cfg, tx, schedule, opts)
  b_sh = shd.batch_sharding(mesh)
  step = jax.jit(fn, in_shardings=(state_sh, b_sh, rep), out_shardings=(state_sh, rep), donate_argnums=(0,))
  init = jax.jit(init_fn, out_shardings=state_sh)
  return Setup(cfg, model_cfg, mesh, graphdef, tx, schedule, state_sh, shd.with_sharding(abstract, state_sh), keys,
               b_sh, rep, step, init)


def check_workdir(workdir: str) -> str:
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir!r} is not writable ({e.strerror or e}); pass a --workdir you can write "
                       "to") from e
  return workdir


def _model_math(model: dict) -> dict:
  """A model config without the fields that change how, not what, it computes (a resumed run may switch
  attention_impl); fields added since the checkpoint take their defaults."""
  from circuits.models.config import IMPL_FIELDS  # pylint: disable=import-outside-toplevel

  d = ModelConfig.from_dict(model).to_dict()
  return {k: v for k, v in d.items() if k not in IMPL_FIELDS}


def _meta(cfg, model_cfg, step: int, n_skipped: int) -> dict:
  tps = int(cfg.train.batch_size) * int(cfg.data.seq_len)
  return dict(step=step, tokens_seen=step * tps, data_position=step, n_skipped=n_skipped, tokens_per_step=tps,
              family=model_cfg.family, time=datetime.datetime.now(datetime.timezone.utc).isoformat(),
              config=json.loads(cfg.to_json()))


def train(config, workdir: str, *, source: data_lib.BatchSource | None = None, devices=None) -> dict:
  """Train (or resume from the newest committed checkpoint in `workdir`) and return a summary dict.

  Writes <workdir>/metrics.jsonl, <workdir>/tb/ (TensorBoard), <workdir>/checkpoints/<step>/ and run.json.
  Raises ConfigError (naming the field; also a model.vocab_size smaller than the token cache's vocabulary),
  CacheError (no cache at data.cache) or WorkdirError before any compute, NonFiniteLossError on a NaN/Inf
  loss under nan_policy='abort'.
  """
  cfg, model_cfg = config_lib.validate(config)
  data_lib.check_vocab(cfg, model_cfg)
  workdir = check_workdir(workdir)
  s = setup(cfg, devices)
  cfg, tr, ck = s.config, s.config.train, s.config.checkpoint
  source = source or data_lib.from_config(cfg, model_cfg)
  steps = int(tr.steps)
  tokens_per_step = int(tr.batch_size) * int(cfg.data.seq_len)
  permanent, _ = schedule_lib.from_config(tr, ck)
  with open(os.path.join(workdir, RUN_FILE), "w") as f:
    json.dump(dict(config=json.loads(cfg.to_json()), tokens_per_step=tokens_per_step, permanent_steps=permanent,
                   mesh=dict(s.mesh.shape)), f, indent=1)
  mgr = None
  if ck.enabled:
    mgr = ckpt.make_manager(workdir, permanent=permanent, resume_every=int(ck.resume_every),
                            keep_resume=int(ck.keep_resume), async_save=bool(ck.async_save),
                            metadata=dict(config=json.loads(cfg.to_json()), tokens_per_step=tokens_per_step))
  start = mgr.latest_step() if mgr is not None else None
  if start is not None:
    state, meta = ckpt.restore(mgr, start, s.abstract_state)
    if _model_math(meta["config"]["model"]) != _model_math(json.loads(cfg.to_json())["model"]):
      raise config_lib.ConfigError(f"model: the checkpoint at step {start} in {workdir} was trained with another "
                                   "model config; use a fresh --workdir")
  else:
    start, state = 0, s.init()
  probe = {}
  if cfg.probe.every:
    probe = jax.device_put(step_lib.probe_batch(cfg, model_cfg), s.probe_sharding)

  jsonl_path = os.path.join(workdir, METRICS_FILE)
  writers.JsonlWriter.truncate_from(jsonl_path, start)
  jsonl = writers.JsonlWriter(jsonl_path)
  tb = writers.TensorBoardWriter(os.path.join(workdir, TB_DIR), purge_step=start if start else None)
  stop = {"flag": False}
  old_handler = None
  if threading.current_thread() is threading.main_thread():
    old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
  pbar = None
  if tr.progress:
    from tqdm import tqdm
    pbar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)
  last = dict(loss=float("nan"), n_skipped=int(np.asarray(jax.device_get(state["n_skipped"]))), t=time.time(),
              step=start)
  t_start, interrupted, done = time.time(), False, start

  def process(t: int, m) -> None:
    """Host side of step t: NaN check, logging, progress."""
    mh = jax.device_get(m)
    loss = float(mh["loss"])
    now = time.time()
    tok_s = tokens_per_step * (t + 1 - last["step"]) / max(now - last["t"], 1e-9)
    last.update(t=now, step=t + 1, loss=loss, n_skipped=int(mh["n_skipped"]))
    if not bool(mh["finite"]):
      if tr.nan_policy == "abort":
        raise NonFiniteLossError(
            f"non-finite loss ({loss}) or grad norm ({float(mh['grad_norm'])}) at step {t}: stopping; the state of "
            f"step {t + 1} is not saved (newest checkpoint: {mgr.latest_step() if mgr else None}). Lower train.lr, "
            "or set train.nan_policy=skip to skip such batches.")
      print(f"[train] step {t}: non-finite loss, update skipped ({int(mh['n_skipped'])} skipped so far)", flush=True)
    ran = bool(mh.get("probe_ran", False))
    if t % int(tr.log_every) == 0 or ran or t == steps - 1 or not bool(mh["finite"]):
      row = {"step": t, "tokens_seen": t * tokens_per_step}
      for k, v in writers.flatten(mh).items():
        if k.startswith("probe/") and not ran:
          continue
        row[k] = v
      row.update(tokens_per_s=tok_s, time_s=now - t_start)
      jsonl.write(row)
      tb.write(t, row)
    if pbar is not None:
      pbar.update(t + 1 - pbar.n)
      pbar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)

  try:
    if mgr is not None and start == 0 and 0 in permanent:
      ckpt.save(mgr, 0, state, _meta(cfg, model_cfg, 0, 0), force=True)
    pending = None
    for t in range(start, steps):
      batch = jax.device_put(source.batch(t), s.batch_sharding)
      state, metrics = s.step(state, batch, probe)
      if pending is not None:
        process(*pending)
      pending, done = (t, metrics), t + 1
      if mgr is not None and (stop["flag"] or done == steps or mgr.should_save(done)):
        process(*pending)
        pending = None
        ckpt.save(mgr, done, state, _meta(cfg, model_cfg, done, last["n_skipped"]), force=True)
      if stop["flag"]:
        interrupted = True
        break
      if tr.host_sleep_s:
        time.sleep(float(tr.host_sleep_s))
    if pending is not None:
      process(*pending)
  finally:
    if mgr is not None:
      mgr.wait_until_finished()
    if pbar is not None:
      pbar.close()
    jsonl.close()
    tb.close()
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
  summary = dict(workdir=workdir, start_step=start, steps_done=done, final_loss=last["loss"],
                 tokens_seen=done * tokens_per_step, n_skipped=last["n_skipped"], interrupted=interrupted,
                 checkpoints=list(mgr.all_steps()) if mgr else [], mesh=dict(s.mesh.shape),
                 wall_s=time.time() - t_start,
                 tokens_per_s=(done - start) * tokens_per_step / max(time.time() - t_start, 1e-9))
  if mgr is not None:
    mgr.close()
  return summary
