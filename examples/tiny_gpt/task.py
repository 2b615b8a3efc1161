"""A small character-level GPT trained on Python's own standard library source (no download).

    hooktrain train examples/tiny_gpt/config.yaml            # the full run, ~3 minutes on a CPU
    hooktrain train examples/tiny_gpt/smoke.yaml             # the CI size, seconds

Gradient accumulation, a cosine schedule with warmup, bf16 autocast and gradient checkpointing
are all arguments in the config. Kill and resume, with a real SIGKILL:

    TINY_GPT_KILL_AT_STEP=60 hooktrain train examples/tiny_gpt/config.yaml     # dies at step 60
    hooktrain train examples/tiny_gpt/config.yaml --resume_from_checkpoint true  # goes on

The second command continues from the newest checkpoint that verifies, with the same data order,
RNG state, optimizer and schedule as if the run had never been interrupted.

Environment variables: ``TINY_GPT_KILL_AT_STEP`` (SIGKILL this process right after that optimizer
step), ``TINY_GPT_SMOKE=1`` (the tiny CI model and data, whatever the config's task says),
``TINY_GPT_SAMPLE=0`` (do not print a generated sample at the end).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooktrain import hookimpl

# The text: a few standard-library modules, identical on every CPython 3 install.
SOURCES = ("textwrap.py", "string.py", "heapq.py", "bisect.py", "functools.py", "contextlib.py",
           "abc.py", "fnmatch.py", "glob.py", "shlex.py", "dataclasses.py", "enum.py")
SMOKE_SOURCES = ("textwrap.py", "string.py")
EVAL_FRACTION = 0.1  # the last 10% of the text is held out

# Vocabulary: tab, newline and printable ASCII; anything else becomes "?".
CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))
STOI = {ch: i for i, ch in enumerate(CHARS)}
UNKNOWN = STOI["?"]


@dataclass
class GPTConfig:
    vocab_size: int = len(CHARS)
    context: int = 128
    dim: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0


FULL = GPTConfig()
SMOKE = GPTConfig(context=32, dim=32, layers=2, heads=2, dropout=0.0)


def encode(text: str) -> torch.Tensor:
    return torch.tensor([STOI.get(ch, UNKNOWN) for ch in text], dtype=torch.long)


def decode(ids: Any) -> str:
    return "".join(CHARS[int(i)] for i in ids)


def read_stdlib(names: tuple[str, ...]) -> str:
    """The concatenated source of the named standard-library modules (those that exist)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [(root / name).read_text(encoding="utf-8") for name in names if (root / name).is_file()]
    if not texts:
        raise FileNotFoundError(f"none of {names} in {root}: this Python ships no stdlib sources")
    return "\n\n".join(texts)


class CharChunks(torch.utils.data.Dataset):
    """Windows of ``context + 1`` characters every ``stride`` characters: inputs and next-char labels."""

    def __init__(self, ids: torch.Tensor, context: int, stride: int | None = None):
        self.ids, self.context, self.stride = ids, context, stride or context
        self.count = max(0, (len(ids) - context - 1) // self.stride + 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        window = self.ids[i * self.stride : i * self.stride + self.context + 1]
        return {"input_ids": window[:-1], "labels": window[1:]}


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TinyGPT(nn.Module):
    """``model(input_ids=..., labels=...)`` returns ``{"loss", "logits"}`` (the Hugging Face contract).

    The blocks live in an ``nn.ModuleList``: that is what ``gradient_checkpointing=True`` wraps.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.positions = nn.Embedding(cfg.context, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.tokens.weight  # tied, as in GPT-2
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        t = input_ids.shape[1]
        x = self.tokens(input_ids) + self.positions(torch.arange(t, device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        return out

    @torch.no_grad()
    def generate(self, prompt: str, length: int, temperature: float = 0.8, seed: int = 0) -> str:
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        ids = encode(prompt).to(device)[None]
        g = torch.Generator(device=device).manual_seed(seed)
        for _ in range(length):
            logits = self(ids[:, -self.cfg.context :])["logits"][0, -1].float()
            probs = torch.softmax(logits / temperature, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)[None]], dim=1)
        self.train(was_training)
        return decode(ids[0].tolist())


class KillAtStep:
    """A simulated crash: SIGKILL this very process right after optimizer step ``step``.

    Nothing is flushed or closed, exactly as after an out-of-memory kill or a lost machine; the
    checkpoints written before that step are all the next run has.
    """

    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def on_step_end(self, state):
        if state.global_step == self.step:
            print(f"\n[tiny_gpt] simulated crash: SIGKILL at step {self.step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class PrintSample:
    """After training, print a few generated characters (what the model learnt, at a glance)."""

    def __init__(self, prompt: str = "def ", length: int = 200):
        self.prompt, self.length = prompt, length

    @hookimpl
    def on_train_end(self, trainer, status):
        if status == "failed" or not trainer.is_world_process_zero:
            return
        text = trainer.model.generate(self.prompt, self.length, seed=trainer.args.seed)
        print(f"\n[tiny_gpt] sample after step {trainer.state.global_step}:\n{text}\n", file=sys.stderr, flush=True)


def _build(args: Any, cfg: GPTConfig, sources: tuple[str, ...]) -> dict[str, Any]:
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # small matrices: one thread is fastest, and fair to a busy machine
    ids = encode(read_stdlib(sources))
    split = int(len(ids) * (1 - EVAL_FRACTION))
    train = CharChunks(ids[:split], cfg.context, stride=cfg.context // 2)
    evaluation = CharChunks(ids[split:], cfg.context)
    torch.manual_seed(args.seed)
    plugins: list[Any] = []
    if os.environ.get("TINY_GPT_SAMPLE", "1") != "0":
        plugins.append(PrintSample(length=200 if cfg is FULL else 40))
    kill_at = os.environ.get("TINY_GPT_KILL_AT_STEP")
    if kill_at:
        plugins.append(KillAtStep(int(kill_at)))
    return {"model": TinyGPT(cfg), "train_dataset": train, "eval_dataset": evaluation, "plugins": plugins}


def build(args: Any) -> dict[str, Any]:
    """The full example (``TINY_GPT_SMOKE=1`` switches to the CI size)."""
    if os.environ.get("TINY_GPT_SMOKE", "0") not in ("", "0"):
        return smoke(args)
    return _build(args, FULL, SOURCES)


def smoke(args: Any) -> dict[str, Any]:
    """The CI size: a 2-layer, 32-wide model on two modules; seconds on a CPU."""
    return _build(args, SMOKE, SMOKE_SOURCES)
