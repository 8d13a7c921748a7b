"""Step time of SEDD training against plain transformer baselines, and GPU throughput / MFU.

CPU (default), in one run, at 256 wide x 4 layers, seq 256, batch 16, one thread:

    python benchmarks/bench_train.py

times one optimiser step (forward, loss, backward, AdamW) of

  sedd     the diffusion transformer with the SEDD objective: stratified t, rm.sample_transition,
           log_score (absorbing parametrisation), rm.score_entropy, DWDSE weighting;
  ce-head  the same network (adaLN conditioning and all) on the same clean batch with a plain
           cross-entropy head: the diffusion overhead is sedd / ce-head - 1 (target <= 10%);
  causal   a plain causal transformer of the same width and depth (LayerNorm, no conditioning,
           next-character cross-entropy): the ratio sedd / causal (target <= 1.10x).

Steps of the three are interleaved and the median of each is reported, which makes the ratios
robust to a shared, noisy machine.

GPU throughput (``--gpu``): tokens/s and model-FLOPs utilisation of a preset (default ``small``)
training with the SEDD objective in bf16 autocast. It times ``ddlab.text.train.train_step``, the
very step of ``python -m ddlab.text.train`` (fused AdamW, clipping, EMA, a fresh pinned batch each
step);
``--sync_check`` first runs one step under ``torch.cuda.set_sync_debug_mode("error")``. FLOPs per
token are counted as ``6 * N + 12 * n_layer * d_model * seq_len`` (N = parameters outside the
embedding; the second term is the attention score and value products, forward and backward,
non-causal), against the dense bf16 peak of the card (989 TFLOP/s for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddlab import Absorbing, LogLinear                                       # noqa: E402
from ddlab.text.checkpoint import EMA, build_model, build_process            # noqa: E402
from ddlab.text.config import make_config                                    # noqa: E402
from ddlab.text.data import CropSampler                                      # noqa: E402
from ddlab.text.model import DiffusionTransformer, ModelConfig               # noqa: E402
from ddlab.text.train import Objective, dwdse_loss, make_optimizer, train_step  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_steps(width, layers, heads, seq, batch, device):
    torch.manual_seed(0)
    common = dict(seq_len=seq, n_layer=layers, n_head=heads, d_model=width, cond_dim=128)
    sedd = DiffusionTransformer(ModelConfig(objective="absorb", **common)).to(device)
    ce = DiffusionTransformer(ModelConfig(objective="absorb", **common)).to(device)
    causal = DiffusionTransformer(ModelConfig(objective="ar", adaln=False, **common)).to(device)
    rm, sch = Absorbing(28), LogLinear(1e-3)
    x0 = torch.randint(0, 27, (batch, seq), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in
            (("sedd", sedd), ("ce-head", ce), ("causal", causal))}

    def sedd_loss():
        return dwdse_loss(rm, sch, sedd, x0, 1e-3, gen).mean() / seq

    def ce_loss():
        z = ce(x0, torch.zeros(batch, device=device))
        return F.cross_entropy(z[..., :27].reshape(-1, 27).float(), x0.reshape(-1))

    def causal_loss():
        return -causal.ar_log_probs(x0).mean()

    def step(name, loss_fn):
        def run():
            opt = opts[name]
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
        return run

    params = {"sedd": sedd.num_params(), "ce-head": ce.num_params(), "causal": causal.num_params()}
    return {"sedd": step("sedd", sedd_loss), "ce-head": step("ce-head", ce_loss),
            "causal": step("causal", causal_loss)}, params


def cpu_benchmark(args):
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    steps, params = make_steps(args.width, args.layers, args.heads, args.seq, args.batch, device)
    for fn in steps.values():                 # warm-up
        fn()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CPU, {args.threads} thread(s), {args.width} wide x {args.layers} layers, seq {args.seq}, "
          f"batch {args.batch}, median of {args.repeats} interleaved steps")
    for k in steps:
        print(f"  {k:8s} {med[k] * 1e3:8.1f} ms/step   ({params[k] / 1e6:.2f}M parameters)")
    over = med["sedd"] / med["ce-head"] - 1
    ratio = med["sedd"] / med["causal"]
    print(f"  diffusion overhead sedd / ce-head - 1 = {over * 100:+.1f}%  (target <= 10%): "
          f"{'PASS' if over <= 0.10 else 'FAIL'}")
    print(f"  sedd / plain causal transformer     = {ratio:.3f}x  (target <= 1.10x): "
          f"{'PASS' if ratio <= 1.10 else 'FAIL'}")


def gpu_throughput(args):
    """Time ddlab.text.train.train_step itself: the step `python -m ddlab.text.train` runs, EMA
    included."""
    device = torch.device(args.device)         # "cpu" only to smoke-test this code (tests do)
    over = {"batch_size": args.gpu_batch} if args.gpu_batch else {}
    cfg = make_config(args.preset, {**over, "seq_len": args.gpu_seq} if args.gpu_seq else over)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if args.compile:
        model.forward = torch.compile(model.forward)
    rm, sch = build_process(cfg)
    objective = Objective(rm, sch, model, cfg.t_min)
    opt, ema = make_optimizer(model, cfg, device), EMA(model.parameters(), cfg.ema)
    gen = torch.Generator(device=device).manual_seed(0)
    B, L = cfg.batch_size, cfg.seq_len
    crops = CropSampler(np.random.default_rng(0).integers(0, 27, 1 << 22, dtype=np.uint8), L, B)

    cuda = device.type == "cuda"

    def step():
        x0 = crops.next()
        x0 = (x0.pin_memory() if cuda else x0).to(device, non_blocking=True)
        return train_step(objective, model, opt, ema, x0, gen, cfg.lr, cfg, use_bf16=cuda)

    t0 = time.perf_counter()
    for _ in range(args.warmup_steps):
        step()
    _sync(device)
    warm = time.perf_counter() - t0
    syncs = "not checked"
    if args.sync_check and cuda:
        # "error" makes any host synchronisation inside the step raise (CUDA only)
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            syncs = "none (torch.cuda.set_sync_debug_mode('error') passed a whole step)"
        except RuntimeError as err:
            syncs = f"FOUND: {str(err).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.gpu_steps):
        loss = step()
    _sync(device)
    dt = (time.perf_counter() - t0) / args.gpu_steps
    n = model.num_params(embeddings=False)
    flops_tok = 6 * n + 12 * cfg.n_layer * cfg.d_model * L
    tok_s = B * L / dt
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke test: the MFU is not meaningful)"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), 989e12)
    setting = "bf16 autocast, fused AdamW" if cuda else "float32, AdamW"
    print(f"{name}: preset {args.preset} ({n / 1e6:.1f}M non-embedding parameters), batch {B} "
          f"x seq {L}, {setting}, EMA, compile={args.compile}, "
          f"warm-up {warm:.1f} s, last loss {loss.item():.3f} nats/char")
    print(f"  host syncs in a step: {syncs}")
    print(f"  {dt * 1e3:.1f} ms/step, {tok_s:,.0f} tokens/s, "
          f"{flops_tok * tok_s / 1e12:.1f} TFLOP/s model FLOPs "
          f"(6N + 12 * n_layer * d_model * seq per token)")
    print(f"  MFU = {flops_tok * tok_s / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16 dense "
          f"(target >= 40%)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="GPU throughput and MFU instead of the CPU ratios")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="small")
    p.add_argument("--gpu_batch", type=int, default=0)
    p.add_argument("--gpu_seq", type=int, default=0)
    p.add_argument("--device", default="cuda", help="with --gpu: cpu only to smoke-test the code")
    p.add_argument("--gpu_steps", type=int, default=20)
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--sync_check", action="store_true",
                   help="GPU: run one step with torch.cuda.set_sync_debug_mode('error')")
    args = p.parse_args(argv)
    if args.gpu:
        gpu_throughput(args)
    else:
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
