"""Published 1B model configs (Hugging Face config.json facts, METHODS.md) and small/tiny variants."""

from configs.base import base_config, model_fields

PYTHIA_1B = dict(family="pythia", vocab_size=50304, d_model=2048, n_layers=16, n_heads=8, d_ff=8192,
                 rotary_pct=0.25, rope_theta=10000.0, norm_eps=1e-5, parallel_residual=True,
                 qkv_bias=True, fused_qkv=True, qk_norm=False)
OLMO_1B_0724 = dict(family="olmo", vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, d_ff=8192,
                    rotary_pct=1.0, rope_theta=10000.0, norm_eps=1e-5, clip_qkv=8.0, fused_qkv=False,
                    qk_norm=False)
OLMOE_1B_7B = dict(family="olmoe", vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, d_ff=1024,
                   rotary_pct=1.0, rope_theta=10000.0, norm_eps=1e-5, n_experts=64, top_k=8,
                   norm_topk_prob=False, router_aux_loss_coef=0.01, router_z_loss_coef=0.001, fused_qkv=False,
                   qk_norm=True)

PUBLISHED = {"pythia": PYTHIA_1B, "olmo": OLMO_1B_0724, "olmoe": OLMOE_1B_7B}

# small: ~10M params at a 8192 vocabulary; tiny: for tests (seconds on a CPU)
SMALL = dict(vocab_size=8192, d_model=256, n_layers=4, d_ff=1024)
TINY = dict(vocab_size=256, d_model=64, n_layers=2, d_ff=128)
HEADS = {"pythia": 4, "olmo": 4, "olmoe": 4}
MOE_SMALL = dict(n_experts=8, top_k=2, d_ff=256)
MOE_TINY = dict(n_experts=4, top_k=2, d_ff=64)


def family_config(family: str, size: str):
  """A full run config for `family` at `size` in {'1b', 'small', 'tiny'}."""
  fields = dict(PUBLISHED[family])
  if size != "1b":
    fields.update(SMALL if size == "small" else TINY, n_heads=HEADS[family])
    if family == "olmoe":
      fields.update(MOE_SMALL if size == "small" else MOE_TINY)
  c = base_config()
  c.model = model_fields(**fields)
  if size == "1b":
    c.data.seq_len = 4096 if family == "olmoe" else 2048
    c.train.batch_size = 1024
    c.train.lr = {"pythia": 3e-4, "olmo": 4e-4, "olmoe": 4e-4}[family]
    c.train.warmup_steps = {"pythia": 1430, "olmo": 2500, "olmoe": 2500}[family]
    c.train.steps = {"pythia": 143000, "olmo": 1454000, "olmoe": 1220000}[family]
    c.train.weight_decay = {"pythia": 0.01, "olmo": 0.1, "olmoe": 0.1}[family]
    c.model.attention_impl = "blockwise"  # no [B, H, T, S] weights kept for the backward pass; same math
    c.mesh.fsdp = -1
    c.mesh.data = 1
    # to fit 1024 x T on 64 devices (16 sequences per device): bf16 activations (fp32 params, optimizer,
    # softmax, loss, diagnostics), the blocks scanned (one layer per iteration of the backward loop; unrolled,
    # XLA:CPU combines every layer's gradient all-reduce into one after the backward and keeps every layer's
    # gradient, or the activations that produce it, alive: Pythia 21.6 GiB of temp unrolled, 4.3 scanned, on 8
    # devices at m = 4), every block rematerialised, microbatches of 8 sequences per device (OLMoE at T 4096: 4;
    # 16384 tokens), the logits formed 256 positions at a time. Figures: the README's table (launch.memory_1b).
    c.model.dtype = "bfloat16"
    c.train.remat = "full"
    c.train.scan_layers = True
    c.train.microbatches = {"pythia": 2, "olmo": 2, "olmoe": 4}[family]
    c.train.loss_chunk = 256
    # the in-loop induction probe at discovery's length (T = 256; at T = 2048 its exact [N, H, T, S] rows,
    # replicated, would need 70 GiB per device): 32 examples every 100 steps (~0.1% of a step's tokens)
    c.probe.every = 100
    c.probe.seq_len = 256
  elif size == "tiny":
    c.data.seq_len = 32
    c.train.batch_size = 8
    c.train.steps = 20
    c.train.warmup_steps = 2
    c.train.lr = 1e-3
  return c
