"""Step time of SEDD training against plain transformer baselines, and GPU throughput / MFU.

CPU (default), in one run, at 256 wide x 4 layers x 4 heads, seq 256, batch 16, float32, on all
the cores this process may use (``--threads``):

    python benchmarks/bench_train.py \
        --nanogpt_git /path/to/karpathy/nanoGPT/.git \
        --sedd_git /path/to/louaaron/Score-Entropy-Discrete-Diffusion/.git

times one optimiser step (zero_grad, forward, loss, backward, AdamW) of

  sedd           the diffusion transformer with the SEDD objective: stratified t,
                 rm.sample_transition, log_score (absorbing parametrisation), rm.score_entropy,
                 DWDSE weighting (inside skip_value_checks(), as ddlab's training step runs it);
  ce-head        the same network (adaLN conditioning and all) on the same clean batch with a
                 plain cross-entropy head: the diffusion overhead is sedd / ce-head - 1;
  ar             ddlab's AR baseline, ``ModelConfig(objective="ar", adaln=False)`` (a plain causal
                 transformer: LayerNorm, no conditioning) on next-character cross-entropy;
  nanogpt        nanoGPT's ``GPT`` (its defaults: biases, exact GELU, learned positions, tied head;
                 vocabulary 28, dropout 0) on next-character cross-entropy;
  sedd-official  the official SEDD network (``model.SEDD``, absorbing, 27 tokens + MASK) and loss
                 (``losses.get_loss_fn``, LogLinear noise), with flash-attn's packed attention
                 replaced by ``F.scaled_dot_product_attention`` and the other packages it imports
                 but does not need on a CPU stubbed, in this script only.

Targets: sedd / nanogpt <= 1.10 and ar / nanogpt <= 1.05. nanoGPT and SEDD are not part of ddlab:
``--nanogpt_git`` / ``--sedd_git`` (or $DDLAB_NANOGPT_GIT / $DDLAB_SEDD_GIT) name their git
directories (bare or not), whose HEAD is exported with ``git archive`` into a temporary folder
that is deleted once they are imported; ``--nanogpt DIR`` / ``--sedd DIR`` (or $DDLAB_NANOGPT /
$DDLAB_SEDD) take checkouts already exported. Without them those models are skipped (and said so).
All models get the same plain ``torch.optim.AdamW(lr=1e-4)``. Steps are interleaved (the order
rotates each round) and the median of each is reported, with the ratios of the medians and the
medians of the per-round ratios: both are robust to a shared, noisy machine. ``--profile N`` then
profiles N steps of each model (interleaved too) and prints the top ops by self CPU time.

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
import contextlib
import importlib
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddlab import Absorbing, LogLinear, skip_value_checks                    # noqa: E402
from ddlab.text.checkpoint import EMA, build_model, build_process            # noqa: E402
from ddlab.text.config import make_config                                    # noqa: E402
from ddlab.text.data import CropSampler                                      # noqa: E402
from ddlab.text.model import DiffusionTransformer, ModelConfig               # noqa: E402
from ddlab.text.train import Objective, dwdse_loss, make_optimizer, train_step  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ reference models (not ddlab)
# nanoGPT and the official SEDD code are never part of ddlab: they are exported from their git
# checkouts into a temporary folder at run time and imported from there.

def export_checkout(git_dir: str, dest: Path) -> Path:
    """``git archive HEAD`` of a (bare) git directory into ``dest``; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "--git-dir", git_dir, "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):       # Python >= 3.11.4: refuse odd members
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    return dest


def _resolve(directory, git_dir, name, tmp: Path):
    """A checkout folder: the given one, or an export of the given git directory, or None."""
    if directory:
        return Path(directory)
    if git_dir:
        return export_checkout(git_dir, tmp / name)
    return None


def load_nanogpt(root: Path):
    """nanoGPT's ``model.py`` as a module (by file path: SEDD has a package named ``model`` too)."""
    spec = importlib.util.spec_from_file_location("_bench_nanogpt_model", root / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sedd_shims():
    """Stand-ins for what the official SEDD model imports but a CPU machine lacks.

    flash-attn's packed varlen attention becomes ``F.scaled_dot_product_attention`` (all sequences
    have the same length here); einops' three ``rearrange`` patterns of ``model/transformer.py``
    become views; the Hugging Face mixin and OmegaConf are not used by a model built from an
    attribute config. Real packages, when installed, are used instead (except flash-attn, which
    has no CPU kernel)."""
    def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                         causal=False, **_):
        B = cu_seqlens.numel() - 1
        q, k, v = qkv.view(B, max_seqlen, *qkv.shape[1:]).transpose(1, 3).unbind(2)  # (B,H,S,D)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
        return out.transpose(1, 2).reshape(-1, *qkv.shape[2:])

    def rearrange(x, pattern, **sizes):
        if pattern == "b s (three h d) -> b s three h d":
            return x.view(*x.shape[:2], sizes["three"], sizes["h"], -1)
        if pattern == "b s ... -> (b s) ...":
            return x.flatten(0, 1)
        if pattern == "(b s) h d -> b s (h d)":
            return x.reshape(sizes["b"], -1, x.shape[1] * x.shape[2])
        raise NotImplementedError(f"benchmark einops shim: {pattern!r}")

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    shims = {"flash_attn": module("flash_attn"),
             "flash_attn.flash_attn_interface": module(
                 "flash_attn.flash_attn_interface",
                 flash_attn_varlen_qkvpacked_func=flash_attn_varlen_qkvpacked_func),
             "einops": module("einops", rearrange=rearrange),
             "huggingface_hub": module("huggingface_hub",
                                       PyTorchModelHubMixin=type("PyTorchModelHubMixin", (), {})),
             "omegaconf": module("omegaconf", OmegaConf=type("OmegaConf", (), {}))}
    for name, shim in shims.items():
        if name.startswith("flash_attn") or importlib.util.find_spec(name.split(".")[0]) is None:
            sys.modules.setdefault(name, shim)
    sys.modules["flash_attn"].flash_attn_interface = sys.modules["flash_attn.flash_attn_interface"]


def load_sedd(root: Path):
    """The official SEDD ``model`` package, ``graph_lib``, ``noise_lib`` and ``losses``.

    Importing its ``model`` package sets TorchScript's global fuser flags (for its scripted
    modulation and rotary functions); ddlab and nanoGPT use no TorchScript."""
    _sedd_shims()
    sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tuple(importlib.import_module(m)
                         for m in ("model", "graph_lib", "noise_lib", "losses"))
    finally:
        sys.path.remove(str(root))


# ------------------------------------------------------------------------------ CPU step times
LABELS = {
    "sedd": "ddlab SEDD (absorbing DWDSE)",
    "ce-head": "ddlab, same net, cross-entropy head",
    "ar": "ddlab AR (causal, adaln=False)",
    "nanogpt": "nanoGPT GPT",
    "sedd-official": "official SEDD (flash-attn -> SDPA)",
}


def make_steps(width, layers, heads, seq, batch, device, nanogpt=None, sedd_root=None,
               models=None):
    """One optimiser step (zero_grad, forward, loss, backward, AdamW) per model, by name."""
    common = dict(seq_len=seq, n_layer=layers, n_head=heads, d_model=width, cond_dim=128)
    rm, sch = Absorbing(28), LogLinear(1e-3)
    x0 = torch.randint(0, 27, (batch, seq), device=device,
                       generator=torch.Generator(device).manual_seed(0))
    gen = torch.Generator(device=device).manual_seed(0)
    nets, losses = {}, {}

    def build(name, fn):
        if models is None or name in models:
            torch.manual_seed(0)
            nets[name], losses[name] = fn()

    # ddlab's losses run inside skip_value_checks(), as in its training step (train_step)
    def ddlab_sedd():
        net = DiffusionTransformer(ModelConfig(objective="absorb", **common)).to(device)

        def loss():
            with skip_value_checks():
                return dwdse_loss(rm, sch, net, x0, 1e-3, gen).mean() / seq
        return net, loss

    def ddlab_ce():
        net = DiffusionTransformer(ModelConfig(objective="absorb", **common)).to(device)
        zero = torch.zeros(batch, device=device)

        def loss():
            with skip_value_checks():
                z = net(x0, zero)[..., :27]
                return F.cross_entropy(z.reshape(-1, 27).float(), x0.reshape(-1))
        return net, loss

    def ddlab_ar():
        net = DiffusionTransformer(ModelConfig(objective="ar", adaln=False, **common)).to(device)

        def loss():
            with skip_value_checks():
                return -net.ar_log_probs(x0).mean()
        return net, loss

    build("sedd", ddlab_sedd)
    build("ce-head", ddlab_ce)
    build("ar", ddlab_ar)
    if nanogpt is not None:
        def nano():
            # nanoGPT's defaults otherwise (bias=True, exact GELU, learned positions, tied head);
            # vocabulary 28 = 27 characters + BOS, as ddlab's AR model
            cfg = nanogpt.GPTConfig(block_size=seq, vocab_size=28, n_layer=layers, n_head=heads,
                                    n_embd=width, dropout=0.0)
            with contextlib.redirect_stdout(io.StringIO()):      # it prints its size
                net = nanogpt.GPT(cfg).to(device)
            return net, lambda: net(x0, x0)[1]
        build("nanogpt", nano)
    if sedd_root is not None:
        def official():
            s_model, s_graph, s_noise, s_losses = sedd_root
            ns = types.SimpleNamespace
            cfg = ns(graph=ns(type="absorb"), tokens=27,
                     model=ns(hidden_size=width, cond_dim=128, n_heads=heads, n_blocks=layers,
                              dropout=0.0, scale_by_sigma=True))
            net = s_model.SEDD(cfg).to(device)
            loss_fn = s_losses.get_loss_fn(s_noise.LogLinearNoise(1e-3), s_graph.Absorbing(27),
                                           train=True, sampling_eps=1e-3)

            def loss():
                with warnings.catch_warnings():   # torch.cuda.amp.autocast on a CPU machine
                    warnings.simplefilter("ignore")
                    return loss_fn(net, x0).mean() / seq
            return net, loss
        build("sedd-official", official)

    def step(net, loss_fn):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
        return run

    params = {k: sum(p.numel() for p in net.parameters()) for k, net in nets.items()}
    return {k: step(nets[k], losses[k]) for k in nets}, params


def profile_steps(steps, n_steps, rows):
    """Top ops by self CPU time, per step, of ``n_steps`` steps of each model (torch.profiler).

    The models are profiled one step at a time in turn, like the timing, so that a change in the
    machine's load falls on all of them alike."""
    from torch.profiler import ProfilerActivity, profile
    acc = {k: {} for k in steps}
    for _ in range(n_steps):
        for name, fn in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            for e in prof.key_averages():
                tot = acc[name].setdefault(e.key, [0.0, 0])
                tot[0] += e.self_cpu_time_total / n_steps / 1e3
                tot[1] += e.count / n_steps
    for name, ops in acc.items():
        top = sorted(ops.items(), key=lambda kv: -kv[1][0])
        print(f"\nprofile {name} ({LABELS[name]}): {sum(v[0] for v in ops.values()):.1f} ms/step "
              f"of self CPU time; top {rows} ops: ms/step, calls/step")
        for key, (ms, calls) in top[:rows]:
            print(f"  {key[:52]:52s} {ms:8.1f} {calls:6.0f}")


def cpu_benchmark(args):
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    skipped = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        nano_dir = _resolve(args.nanogpt or os.environ.get("DDLAB_NANOGPT"),
                            args.nanogpt_git or os.environ.get("DDLAB_NANOGPT_GIT"), "nanoGPT", tmp)
        sedd_dir = _resolve(args.sedd or os.environ.get("DDLAB_SEDD"),
                            args.sedd_git or os.environ.get("DDLAB_SEDD_GIT"), "SEDD", tmp)
        nanogpt = load_nanogpt(nano_dir) if nano_dir else None
        sedd = load_sedd(sedd_dir) if sedd_dir else None
    if nanogpt is None:
        skipped.append("nanoGPT (no --nanogpt DIR / --nanogpt_git GITDIR)")
    if sedd is None:
        skipped.append("official SEDD (no --sedd DIR / --sedd_git GITDIR)")
    models = set(args.models.split(",")) if args.models else None
    steps, params = make_steps(args.width, args.layers, args.heads, args.seq, args.batch, device,
                               nanogpt, sedd, models)
    names = list(steps)
    for _ in range(2):                        # warm-up (the official SEDD compiles TorchScript)
        for fn in steps.values():
            fn()
    times = {k: [] for k in steps}
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:   # rotate the order
            t = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s) of "
          f"{os.cpu_count()} CPUs, load average {load:.2f}; {args.width} wide x {args.layers} "
          f"layers x {args.heads} heads, seq {args.seq}, batch {args.batch}, float32; "
          f"median of {args.repeats} interleaved steps")
    for k in steps:
        print(f"  {k:14s} {med[k] * 1e3:8.1f} ms/step  {params[k] / 1e6:5.2f}M params  {LABELS[k]}")
    for s in skipped:
        print(f"  skipped: {s}")

    def ratio(a, b, target=None, what=""):
        if a not in med or b not in med:
            return
        per_round = statistics.median(x / y for x, y in zip(times[a], times[b]))
        r = med[a] / med[b]
        verdict = "" if target is None else \
            f"  (target <= {target:.2f}x: {'PASS' if r <= target else 'FAIL'})"
        print(f"  {a + ' / ' + b:26s} = {r:.3f}x  [median of per-round ratios "
              f"{per_round:.3f}x]{verdict}{what}")

    print("ratios of median step times:")
    ratio("sedd", "nanogpt", 1.10)
    ratio("ar", "nanogpt", 1.05)
    ratio("sedd", "sedd-official")
    ratio("sedd-official", "nanogpt")
    ratio("sedd", "ce-head", 1.10, "  diffusion overhead")
    ratio("sedd", "ar", 1.10)
    if args.profile:
        profile_steps(steps, args.profile, args.profile_rows)


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
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0))
                   if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                   help="torch threads (default: all the cores this process may use)")
    p.add_argument("--models", default="",
                   help="comma-separated subset of " + ",".join(LABELS) + " (default: all)")
    p.add_argument("--nanogpt", default="", help="an exported nanoGPT checkout (or $DDLAB_NANOGPT)")
    p.add_argument("--nanogpt_git", default="",
                   help="a nanoGPT git directory, exported to a temporary folder "
                        "(or $DDLAB_NANOGPT_GIT)")
    p.add_argument("--sedd", default="", help="an exported official SEDD checkout (or $DDLAB_SEDD)")
    p.add_argument("--sedd_git", default="",
                   help="an official SEDD git directory, exported to a temporary folder "
                        "(or $DDLAB_SEDD_GIT)")
    p.add_argument("--profile", type=int, default=0,
                   help="then profile this many steps of each model (torch.profiler, CPU)")
    p.add_argument("--profile_rows", type=int, default=15)
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
