"""The device mesh and the logical-axis rules: the only module that names mesh axes.

Mesh axes: data (pure data parallel), fsdp (data parallel + parameter/optimizer sharding), tensor
(heads / mlp / vocab), expert (MoE experts; size 1 unless asked). Every nnx.Param carries logical axis
names (circuits.models.layers.LOGICAL_AXES) as metadata `out_sharding`; `LOGICAL_RULES` maps each to a mesh
axis. A dimension stays replicated when its mesh axis has size 1, is already used by another dimension of
the same array, or does not divide the dimension (e.g. 4 heads on a tensor axis of 8).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from circuits.models import layers as L
from circuits.models.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")  # the batch dimension is split over these
LOGICAL_RULES: dict[str, str | None] = {
    L.EMBED: "fsdp",
    L.VOCAB: "tensor",
    L.HEADS: "tensor",
    L.KV_HEADS: "tensor",
    L.HEAD_DIM: None,
    L.MLP: "tensor",
    L.EXPERT: "expert",
    L.QKV: None,
}
assert set(LOGICAL_RULES) == set(L.LOGICAL_AXES), "every logical axis needs a rule"


def mesh_shape(mesh_cfg: Mapping[str, int], n_devices: int) -> dict[str, int]:
  """Resolve the config's axis sizes (one may be -1: the remaining devices); fields named in errors."""
  sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ConfigError(f"mesh.{free[1]}: only one mesh axis may be -1 (got -1 for {free})")
  for a, s in sizes.items():
    if s == 0 or s < -1:
      raise ConfigError(f"mesh.{a}: must be a positive size or -1 (got {s})")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if n_devices % fixed:
      raise ConfigError(f"mesh.{free[0]}=-1: {n_devices} devices are not divisible by the other axes' "
                        f"product {fixed}")
    sizes[free[0]] = n_devices // fixed
  total = int(np.prod(list(sizes.values())))
  if total > n_devices:
    raise ConfigError(f"mesh: {sizes} needs {total} devices but only {n_devices} are available "
                      f"(set mesh.data=-1 or smaller sizes)")
  return sizes


def make_mesh(mesh_cfg: Mapping[str, int], devices=None) -> Mesh:
  """A GSPMD (Auto axes) mesh over the first prod(sizes) devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_cfg, len(devices))
  n = int(np.prod(list(sizes.values())))
  arr = np.asarray(devices[:n], dtype=object).reshape([sizes[a] for a in MESH_AXES])
  return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_axis_size(mesh: Mesh) -> int:
  """How many ways the mesh splits the batch (the product of its BATCH_AXES sizes)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def logical_to_spec(names, shape, mesh: Mesh) -> P:
  """PartitionSpec of an array with logical axis `names` (None entries stay replicated)."""
  names = tuple(names) if names else (None,) * len(shape)
  used, spec = set(), []
  for name, dim in zip(names, shape):
    axis = LOGICAL_RULES.get(name) if name is not None else None
    if axis is None or axis in used or mesh.shape[axis] == 1 or dim % mesh.shape[axis]:
      spec.append(None)
    else:
      used.add(axis)
      spec.append(axis)
  return P(*spec)


def _map_state(fn, state):
  """Map `fn(variable)` over an nnx.State (a nested Mapping of Variables) into a pure nested dict."""
  if isinstance(state, nnx.Variable):
    return fn(state)
  return {k: _map_state(fn, v) for k, v in state.items()}


def param_shardings(abstract_params_state, mesh: Mesh) -> dict:
  """NamedShardings (a pure dict shaped like nnx.to_pure_dict(params)) from each Param's logical axes."""
  def one(var):
    names = var.get_metadata().get("out_sharding") or var.get_metadata().get("sharding_names")
    return NamedSharding(mesh, logical_to_spec(names, var.shape, mesh))
  return _map_state(one, abstract_params_state)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def tree_shardings_like(tree, params_tree, params_shardings, mesh: Mesh):
  """Shardings for `tree` (e.g. an optax state): subtrees shaped like the params get the params'
  shardings, every other leaf is replicated."""
  params_def = jax.tree.structure(params_tree)
  is_params = lambda x: jax.tree.structure(x) == params_def
  return jax.tree.map(lambda x: params_shardings if is_params(x) else replicated(mesh), tree,
                      is_leaf=is_params)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Batch-major arrays: dimension 0 split over the data, fsdp and expert axes."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def with_sharding(abstract: Any, shardings: Any):
  """ShapeDtypeStructs carrying shardings (for lowering and for Orbax restores onto a topology)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
