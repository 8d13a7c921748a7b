"""Training configuration: one plain dataclass, named presets, command-line overrides (lesson 9).

    cfg = make_config("tiny-cpu", ["--objective", "uniform", "--lr=1e-3"])

Every field of :class:`TrainConfig` is a ``--key value`` (or ``--key=value``) override; the type
comes from the field's default. An unknown preset or key, or a value of the wrong type, raises
ValueError listing what is valid. Renamed fields (``RENAMED``: ``t_eps`` is now ``t_min``) are
still accepted, with a DeprecationWarning, and :func:`config_from_dict` reads the configuration
saved in an older checkpoint.

Noise processes and their scaling (docs/design.md):

* ``absorb``: ``ddlab.Absorbing(28)`` (MASK = 27) with ``LogLinear(noise_eps)``, as SEDD.
* ``uniform``: ``ddlab.Uniform(27)`` with ddlab's ``Q = 1 - nI`` (off-diagonal rates 1). SEDD's code
  uses ``Q / n`` with a Geometric schedule from 1e-4 to 20; the same process in ddlab's units has
  sigma_bar divided by n, so the schedule here is ``Geometric(uniform_sigma_min / n,
  uniform_sigma_max / n)`` (``UNIFORM_Q_SCALING`` says this in one line, and checkpoints store it).
* ``ar``: the causal baseline, trained with next-character cross-entropy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import as_int, as_real

UNIFORM_Q_SCALING = ("ddlab Uniform: Q = 1 - nI; SEDD's code uses Q/n with Geometric(1e-4, 20), "
                     "so here sigma_bar runs over Geometric(1e-4/n, 20/n), the same process")


# old name -> new name; one table for the command line and for configurations saved in checkpoints
RENAMED = {"t_eps": "t_min"}


@dataclass
class TrainConfig:
    # ---- model
    objective: str = "absorb"      # absorb | uniform | ar
    param: str = "score"           # absorb: score (SEDD) | denoiser (MDLM's normalised softmax)
    time_input: bool = True        # False: the network never sees sigma_bar (time-agnostic)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    cond_dim: int = 64
    seq_len: int = 128
    dropout: float = 0.0
    neighbours: int = 0            # k > 0: each position also embeds the tokens k places around it
    neighbour_pairs: bool = False  # and every two adjacent ones among them as pairs (k >= 2)
    # ---- data
    data: str = "text8"            # text8 | fallback | pydoc | path of a text8-format .txt file
    fallback: bool = True          # use the offline corpus (with a warning) when text8 is missing
    # ---- noise
    noise_eps: float = 1e-3        # LogLinear eps: sigma_bar(1) = -log(noise_eps)
    t_min: float = 1e-3            # training times t ~ U(t_min, 1), stratified over the batch
    uniform_sigma_min: float = 1e-4   # SEDD's units (Q/n); divided by n here
    uniform_sigma_max: float = 20.0
    # ---- optimisation
    batch_size: int = 32           # per process (DDP: each rank draws its own batch)
    lr: float = 3e-3
    min_lr: float = -1.0           # >= 0: cosine decay to it at max_steps; < 0: constant after warmup
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup: int = 50               # linear warmup steps, then constant (as SEDD)
    grad_clip: float = 1.0
    ema: float = 0.99
    max_steps: int = 300
    time_budget_s: float = 0.0     # > 0: also stop after this many seconds of training
    # ---- runtime
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda
    bf16: bool = True              # bf16 autocast (only on CUDA)
    compile: bool = False          # torch.compile the model
    threads: int = 0               # CPU threads; 0: every core (1 on a machine shared with others)
    # ---- bookkeeping
    eval_every: int = 0            # 0: evaluate only at the end
    eval_batches: int = 4
    ckpt_every: int = 0            # 0: checkpoint only at the end
    log_every: int = 10
    progress: bool = True          # tqdm bar
    out: str = "runs/default"
    ddp_timeout_s: float = 600.0   # DDP: how long a rank waits for the others before failing
    preset: str = field(default="tiny-cpu")


PRESETS: dict[str, dict] = {
    # The CPU recipe of lesson 9: about 4 minutes a model on 2 cores (49-55 ms a train_step quietly;
    # lesson 9's notebook run: 176-230 s a model, benchmarks/RESULTS.md).
    # Sweeps at equal compute (benchmarks/RESULTS.md, "The CPU recipe") found: the neighbour
    # embeddings end the plateau at the letters-only level (3.58 -> 3.15 bits/char at 600 steps;
    # 2.87 -> 2.65 on lesson 9's test chunks after 3,300), 256-character crops beat 128 at equal
    # characters per step (2.67 -> 2.61), embedded pairs of neighbours add a little (2.61 -> 2.58;
    # all adjacent pairs instead of two, 2.58 -> 2.53 on valid chunks); the sigma_bar input
    # matters although absorbing noise needs none in theory (time_input=False: 2.58 -> 2.81).
    # With the neighbours, fewer layers and more steps win: one layer at 5,000 steps beat two at
    # 2,800 in the same time (2.53 -> 2.48), five neighbours a side beat three (2.48 -> 2.42), and
    # lr 6e-4 beat 1e-3 and 2e-3 (2.42 -> 2.39; 2.50 at 2e-3), cosine decay to 1e-4.
    # threads 0: every core (pass --threads 1 on a machine shared with other work).
    "tiny-cpu": dict(n_layer=1, n_head=4, d_model=128, cond_dim=64, seq_len=256, batch_size=8,
                     neighbours=5, neighbour_pairs=True, lr=6e-4, min_lr=1e-4, warmup=100,
                     ema=0.99, max_steps=4200, threads=0),
    # In between: ~11M parameters, a few minutes on one GPU.
    "mini": dict(n_layer=6, n_head=6, d_model=384, cond_dim=128, seq_len=256, batch_size=128,
                 lr=1e-3, warmup=500, ema=0.999, max_steps=20_000, eval_every=1000,
                 ckpt_every=1000),
    # SEDD's "small": 12 layers, 768 wide, 12 heads, seq 256 (~90M parameters).
    "small": dict(n_layer=12, n_head=12, d_model=768, cond_dim=128, seq_len=256, batch_size=256,
                  lr=3e-4, warmup=2500, ema=0.9999, max_steps=400_000, eval_every=5000,
                  ckpt_every=5000),
}


class ConfigError(ValueError):
    """A bad option value or combination: a usage error (the CLIs exit with status 2)."""


def _renamed(key: str) -> str:
    if key in RENAMED:
        warnings.warn(f"--{key} is deprecated; use --{RENAMED[key]}", DeprecationWarning,
                      stacklevel=3)
        return RENAMED[key]
    return key


def config_from_dict(saved: dict) -> TrainConfig:
    """The TrainConfig of a checkpoint's ``config`` dict, older field names renamed (RENAMED)."""
    return TrainConfig(**{RENAMED.get(k, k): v for k, v in saved.items()})


def field_types() -> dict[str, type]:
    return {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}


def _convert(key: str, raw: str, typ: type):
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        return str(raw)
    except ValueError:
        hint = "true/false" if typ is bool else typ.__name__
        raise ConfigError(f"--{key} expects a value of type {hint}, got {raw!r}") from None


def parse_overrides(args: list[str]) -> dict:
    """``["--lr", "1e-3", "--bf16=false"]`` -> ``{"lr": 1e-3, "bf16": False}``, typed and checked."""
    types = field_types()
    out, i = {}, 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise ConfigError(f"expected --key value, got {tok!r}")
        key, eq, raw = tok[2:].partition("=")
        key = _renamed(key.replace("-", "_"))
        if key not in types:
            raise ConfigError(f"unknown option --{key}; valid options: "
                             + ", ".join(f"--{k}" for k in types))
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value")
            raw, i = args[i + 1], i + 1
        out[key] = _convert(key, raw, types[key])
        i += 1
    return out


def make_config(preset: str = "tiny-cpu", overrides=None) -> TrainConfig:
    """A TrainConfig from a preset plus overrides (a dict, or a list of ``--key value`` strings)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(list(overrides))
    overrides = {_renamed(k): v for k, v in dict(overrides or {}).items()}
    types = field_types()
    for k, v in overrides.items():
        if k not in types:
            raise ConfigError(f"unknown option {k!r}; valid options: {', '.join(types)}")
        if types[k] is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, types[k]) or (types[k] is int and isinstance(v, bool)):
            raise ConfigError(f"option {k!r} expects {types[k].__name__}, got {v!r}")
        overrides[k] = v
    values.update(overrides)
    cfg = TrainConfig(preset=preset, **values)
    check_config(cfg, device_check=False)    # the device is checked where it is used (train)
    return cfg


# ------------------------------------------------------------------------------- validation
def check_device(device, name: str = "--device") -> str:
    """``device`` if it names a device this machine has: auto, cpu, cuda or cuda:N."""
    import torch
    if not isinstance(device, str):
        raise ConfigError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{name} {device!r} was asked for but CUDA is not available on this "
                              f"machine; use --device cpu (or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"{name} {device!r}: this machine has "
                              f"{torch.cuda.device_count()} GPU(s), cuda:0.."
                              f"cuda:{torch.cuda.device_count() - 1}")
    return device


def check_config(cfg: TrainConfig, split_length=None, *, device_check: bool = True) -> TrainConfig:
    """Raise :class:`ConfigError` (a ValueError) naming the first bad field of ``cfg`` (lesson 9).

    Run before the first training step, so that no mistake surfaces only after training.
    ``split_length`` is the number of characters of the training split (an int), or a dict
    ``{"train": n, "valid": m}``: the training split must hold one crop of seq_len + 1 (the
    sampler draws starts in 0..n - seq_len), the others one chunk of seq_len. ``device_check``
    also checks that the device exists on this machine.
    """
    def check(fn, key, *args, **kw):
        try:
            return fn(getattr(cfg, key), f"--{key}", *args, **kw)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    if cfg.objective not in ("absorb", "uniform", "ar"):
        raise ConfigError(f"--objective must be 'absorb', 'uniform' or 'ar', got {cfg.objective!r}")
    if cfg.param not in ("score", "denoiser"):
        raise ConfigError(f"--param must be 'score' or 'denoiser', got {cfg.param!r}")
    if cfg.param == "denoiser" and cfg.objective != "absorb":
        raise ConfigError(f"--param denoiser (MDLM) needs --objective absorb, got "
                          f"{cfg.objective!r}")
    for key in ("n_layer", "n_head", "d_model", "cond_dim", "seq_len", "batch_size",
                "log_every", "eval_batches"):
        check(as_int, key, 1)
    for key in ("max_steps", "warmup", "eval_every", "ckpt_every", "threads", "seed",
                "neighbours"):
        check(as_int, key, 0)
    if cfg.neighbours >= cfg.seq_len:
        raise ConfigError(f"--neighbours = {cfg.neighbours} must be below --seq_len = {cfg.seq_len}")
    if cfg.neighbour_pairs and cfg.neighbours < 2:
        raise ConfigError(f"--neighbour_pairs true embeds pairs of adjacent neighbours: it needs "
                          f"--neighbours >= 2, got {cfg.neighbours}")
    if cfg.d_model % cfg.n_head or (cfg.d_model // cfg.n_head) % 2:
        raise ConfigError(f"--d_model = {cfg.d_model} must split into --n_head = {cfg.n_head} "
                          f"heads of an even width (rotary embeddings)")
    check(as_real, "dropout", 0.0, 1.0, lo_closed=True)
    check(as_real, "noise_eps", 0.0, 1.0)
    check(as_real, "t_min", 0.0, 1.0)
    check(as_real, "uniform_sigma_min", 0.0)
    check(as_real, "uniform_sigma_max", cfg.uniform_sigma_min)
    check(as_real, "lr", 0.0)
    if cfg.min_lr >= 0:
        check(as_real, "min_lr", 0.0, cfg.lr, lo_closed=True, hi_closed=True)
    check(as_real, "weight_decay", 0.0, lo_closed=True)
    check(as_real, "beta1", 0.0, 1.0, lo_closed=True)
    check(as_real, "beta2", 0.0, 1.0, lo_closed=True)
    check(as_real, "grad_clip", 0.0, lo_closed=True)
    check(as_real, "ema", 0.0, 1.0, lo_closed=True)
    check(as_real, "time_budget_s", 0.0, lo_closed=True)
    check(as_real, "ddp_timeout_s", 0.0)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be 'auto', 'cpu' or 'cuda', got {cfg.device!r}")
    if device_check:
        check_device(cfg.device)
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ConfigError(f"--out {cfg.out!r} is a file, not a folder; give a folder for the run")
    if split_length is not None:
        lengths = split_length if isinstance(split_length, dict) else {"train": split_length}
        for split, n in lengths.items():
            need = cfg.seq_len + 1 if split == "train" else cfg.seq_len   # a crop / a chunk
            if n < need:
                raise ConfigError(f"--seq_len = {cfg.seq_len} is too long for the {split} split "
                                  f"of {n:,} characters (it needs at least {need:,}); use "
                                  f"--seq_len <= {n - (need - cfg.seq_len):,} or more data")
    return cfg


# ------------------------------------------------------------------------------- the commands
class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`ConfigError` (so that :func:`run_cli` prints one line
    and exits with status 2) instead of a usage block and a second line of its own."""

    def error(self, message):
        raise ConfigError(message)


def at_least(least: int):
    """An argparse ``type``: an int >= ``least``, else a one-line error naming the value."""
    def convert(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {raw!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {value}")
        return value
    convert.__name__ = f"integer >= {least}"
    return convert


class CommandError(SystemExit):
    """How a CLI ends on an error: exit status ``code``, ``str()`` is the one-line message."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message

    def __str__(self):
        return self.message


def _debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    debug = os.environ.get("DDLAB_DEBUG", "").lower() not in ("", "0", "false", "no")
    return [a for a in argv if a != "--debug"], debug or "--debug" in argv


def run_cli(body, argv=None):
    """Run a command ``body(argv)`` the way every ddlab CLI ends (lesson 9).

    A library error becomes one line on stderr, ``error: <what was wrong and what is valid>``, and
    exit status 2 for a usage error (:class:`ConfigError`, a bad option) or 1 for a failure (a
    missing or corrupt checkpoint, a held lock, a diverged run, a data or disk problem). The
    traceback is printed only with ``--debug`` or ``DDLAB_DEBUG=1``. An exception with an
    ``exit_code`` attribute (an interrupted training run: 130 for SIGINT, 143 for SIGTERM) exits
    with it.
    """
    argv, debug = _debug_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        return body(argv)
    except CommandError:
        raise
    except (Exception, KeyboardInterrupt) as err:     # noqa: BLE001  (the one place that ends)
        if isinstance(err, KeyboardInterrupt) and not hasattr(err, "exit_code"):
            code, message = 130, "interrupted"
        elif hasattr(err, "exit_code"):
            code, message = err.exit_code, str(err)
        elif isinstance(err, ConfigError):
            code, message = 2, str(err)
        else:
            known = isinstance(err, (ValueError, RuntimeError, OSError))
            message = str(err) if known and str(err) else f"{type(err).__name__}: {err}"
            code = 1
        message = " ".join(message.split())          # one line, whatever the library wrote
        if debug:
            traceback.print_exc()
        elif code == 1 and not isinstance(err, (ValueError, RuntimeError, OSError)):
            message += " (rerun with --debug for the traceback)"
        prefix = "" if isinstance(err, KeyboardInterrupt) else "error: "
        print(prefix + message, file=sys.stderr, flush=True)
        raise CommandError(prefix + message, code) from None


__all__ = ["TrainConfig", "PRESETS", "UNIFORM_Q_SCALING", "RENAMED", "ConfigError",
           "make_config", "parse_overrides", "config_from_dict", "check_config", "check_device",
           "CommandError", "run_cli", "ArgumentParser", "at_least"]
