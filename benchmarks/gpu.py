"""GPU check of the precision plugin: fp32, TF32, fp16, bf16 and gradient checkpointing on CUDA.

Trains a small decoder-only transformer (pre-norm blocks in an ``nn.ModuleList``, causal
``scaled_dot_product_attention``) through the ``Trainer`` once per configuration and prints a
markdown table: optimizer steps per second (timed after the warm-up steps, with
``torch.cuda.synchronize``), ``torch.cuda.max_memory_allocated`` over the run, the final training
loss, the fp16 skipped steps, and what the configuration really did (the dtype a Linear layer
computed in, the TF32 switch seen during training, the checkpointed forward passes).

Without CUDA it prints ``skipped: no CUDA`` and exits 0; CI never needs a GPU. ``--cpu`` runs
the same checks on the CPU (tiny sizes advised) to test this script itself; its memory column is
then empty and TF32 is not checked.

``--fsdp`` runs the sharded configurations of :data:`FSDP_CONFIGS` instead (:func:`fsdp_main`):
it launches itself under ``torchrun`` with one process per GPU (NCCL; ``--nproc`` to choose),
trains with ``fsdp`` and the bf16 ``MixedPrecisionPolicy`` (DDP bf16 as the reference; the
blocks are the FSDP units) and prints ``torch.cuda.max_memory_allocated`` per rank.

``--throughput`` checks the throughput plugin instead (:func:`throughput_main`): bf16 runs with
the plugin on and off, each under ``torch.cuda.set_sync_debug_mode("warn")``, counting the
synchronising CUDA calls (equal counts: the plugin adds none), with the logged tokens/s, MFU,
counted FLOPs per sample against the analytic estimate and the device memory figures.

``--checkpoint`` checks checkpoints written in the background on CUDA instead
(:func:`checkpoint_main`): runs with no saves, ``save_async=True`` and ``save_async=False``, a save
every ``--save-every`` steps; steps/s, the training thread's time per save, the snapshot's host
memory, whether its buffers are pinned and reused, and whether every checkpoint holds the weights
right after its step (no torn snapshot while the next steps run on the GPU).

Run: ``python benchmarks/gpu.py [--steps 40] [--warmup 10] [--batch 16] [--seq 512]``
(``--fsdp [--nproc N]`` for the sharded runs, ``--throughput`` for the throughput plugin,
``--checkpoint [--save-every 5]`` for background checkpoints).
Exit status 1 when a configuration fails or its checks do not hold.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from typing import Any

import torch

from hooktrain import Trainer, TrainingArguments, hookimpl

#: name -> precision arguments (tf32 is on by default in hooktrain, so fp32 turns it off)
CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"tf32": False},
    "fp32 + tf32": {"tf32": True},
    "fp16": {"fp16": True, "tf32": False},
    "bf16": {"bf16": True, "tf32": False},
    "bf16 + gradient checkpointing": {"bf16": True, "tf32": False, "gradient_checkpointing": True},
    "fp32 + tf32 + gradient checkpointing": {"tf32": True, "gradient_checkpointing": True},
}


class Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.fc2 = torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyGPT(torch.nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, seq: int):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Parameter(torch.zeros(seq, dim))
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten()
            )
        return out


class Tokens(torch.utils.data.Dataset):
    """Random token sequences with a learnable rule (each token is the previous one plus one)."""

    def __init__(self, n: int, seq: int, vocab: int):
        g = torch.Generator().manual_seed(0)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        self.ids = (start + torch.arange(seq)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Probe:
    """Times the steps after the warm-up and records what the configuration really did."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.timed_steps = 0
        self.linear_dtypes: set[torch.dtype] = set()
        self.tf32_seen: Any = None
        self.fc1_calls = 0

    def attach(self, model: TinyGPT) -> None:
        block = model.blocks[0]
        block.fc1.register_forward_hook(lambda m, i, o: self.linear_dtypes.add(o.dtype))
        block.fc1.register_forward_hook(lambda *a: setattr(self, "fc1_calls", self.fc1_calls + 1))

    @hookimpl
    def on_step_end(self, state):
        if state.global_step == self.warmup:
            _sync()
            self.start = time.perf_counter()
            matmul = torch.backends.cuda.matmul
            self.tf32_seen = getattr(matmul, "fp32_precision", None) or matmul.allow_tf32
        elif self.start is not None:
            _sync()
            self.end = time.perf_counter()
            self.timed_steps = state.global_step - self.warmup


def run(name: str, precision: dict[str, Any], opts: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    model = TinyGPT(opts.vocab, opts.dim, opts.heads, opts.layers, opts.seq)
    probe = Probe(opts.warmup)
    probe.attach(model)
    args = TrainingArguments(
        output_dir=out_dir, report_to="none", save_strategy="no", disable_tqdm=True,
        max_steps=opts.warmup + opts.steps, per_device_train_batch_size=opts.batch,
        learning_rate=3e-4, warmup_steps=opts.warmup, logging_steps=opts.warmup + opts.steps,
        dataloader_num_workers=0 if opts.cpu else 2, seed=0, use_cpu=opts.cpu, **precision,
    )
    if not opts.cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(opts.batch * (opts.warmup + opts.steps), opts.seq, opts.vocab),
                      plugins=[probe])
    result = trainer.train()
    peak = float("nan") if opts.cpu else torch.cuda.max_memory_allocated()
    seconds = (probe.end or 0.0) - (probe.start or 0.0)
    steps = opts.warmup + opts.steps
    problems = []
    want = torch.float16 if precision.get("fp16") else torch.bfloat16 if precision.get("bf16") else torch.float32
    if probe.linear_dtypes != {want}:
        problems.append(f"Linear computed in {sorted(map(str, probe.linear_dtypes))}, expected {want}")
    ckpt = precision.get("gradient_checkpointing", False)
    if probe.fc1_calls != steps * (2 if ckpt else 1):
        problems.append(f"fc1 ran {probe.fc1_calls} times in {steps} steps (checkpointing={ckpt})")
    major = 0 if opts.cpu else torch.cuda.get_device_capability()[0]
    tf32_on = probe.tf32_seen in (True, "tf32")
    if major >= 8 and tf32_on != bool(precision.get("tf32")):
        problems.append(f"TF32 switch during training was {probe.tf32_seen!r}")
    if not math.isfinite(result.training_loss):
        problems.append(f"training loss {result.training_loss}")
    return {
        "name": name,
        "steps_per_s": probe.timed_steps / seconds if seconds > 0 else float("nan"),
        "peak_mib": peak / 2**20,
        "loss": result.training_loss,
        "skipped": trainer.state.skipped_steps,
        "dtype": ", ".join(sorted(str(d).replace("torch.", "") for d in probe.linear_dtypes)),
        "tf32": probe.tf32_seen,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (to test this script)")
    parser.add_argument("--fsdp", action="store_true", help="the FSDP2 runs instead, under torchrun (fsdp_main)")
    parser.add_argument("--nproc", type=int, default=None, help="--fsdp: processes (default: one per GPU)")
    parser.add_argument("--throughput", action="store_true", help="the throughput plugin's check (throughput_main)")
    parser.add_argument("--checkpoint", action="store_true", help="background checkpoints on CUDA (checkpoint_main)")
    parser.add_argument("--save-every", type=int, default=5, help="--checkpoint: steps between saves")
    opts = parser.parse_args(argv)
    if opts.checkpoint:
        return checkpoint_main(opts)
    if opts.throughput:
        return throughput_main(opts)
    if opts.fsdp:
        return fsdp_main(opts, list(argv if argv is not None else sys.argv[1:]))
    if opts.cpu:
        print(f"CPU run (testing the script), torch {torch.__version__}")
        bf16_ok = True
    elif not torch.cuda.is_available():
        print("skipped: no CUDA (torch.cuda.is_available() is False); nothing to check on this machine")
        return 0
    else:
        cap = torch.cuda.get_device_capability()
        print(f"{torch.cuda.get_device_name()} (compute capability {cap[0]}.{cap[1]}), torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}")
        bf16_ok = cap[0] >= 8
    print(f"model: {opts.layers} blocks, d={opts.dim}, {opts.heads} heads, vocab {opts.vocab}; batch {opts.batch} x "
          f"{opts.seq} tokens; optim {TrainingArguments(output_dir='.').optim}; {opts.warmup} warm-up + "
          f"{opts.steps} timed steps\n")
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as out_dir:
        for name, precision in CONFIGS.items():
            if opts.only and name not in opts.only:
                continue
            if precision.get("bf16") and not bf16_ok:
                rows.append({"name": name, "skipped": "no native bf16 on this GPU (needs Ampere or newer)"})
                continue
            try:
                rows.append(run(name, precision, opts, out_dir))
            except Exception as exc:  # report every configuration, fail at the end
                rows.append({"name": name, "problems": [f"{type(exc).__name__}: {exc}"]})
            sys.stdout.flush()
    print("| configuration | steps/s | tokens/s | max_memory_allocated (MiB) | final loss | skipped steps "
          "| Linear dtype | TF32 switch | check |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        if isinstance(r.get("skipped"), str):
            print(f"| {r['name']} | | | | | | | | skipped: {r['skipped']} |")
            continue
        if "steps_per_s" not in r:
            print(f"| {r['name']} | | | | | | | | FAILED: {'; '.join(r['problems'])} |")
            failed = True
            continue
        check = "ok" if not r["problems"] else "FAILED: " + "; ".join(r["problems"])
        failed |= bool(r["problems"])
        print(f"| {r['name']} | {r['steps_per_s']:.2f} | {r['steps_per_s'] * opts.batch * opts.seq:,.0f} "
              f"| {r['peak_mib']:,.0f} | {r['loss']:.4f} | {r['skipped']} | {r['dtype']} | {r['tf32']} | {check} |")
    return 1 if failed else 0


# ---- FSDP2: sharded training under torchrun (NCCL on GPUs) ------------------------------------

#: name -> arguments of the sharded runs; the blocks of TinyGPT are the FSDP units
FSDP_CONFIGS: dict[str, dict[str, Any]] = {
    "DDP bf16 (reference)": {"bf16": True, "tf32": False},
    "FSDP full_shard bf16": {"bf16": True, "tf32": False, "fsdp": "full_shard"},
    "FSDP shard_grad_op bf16": {"bf16": True, "tf32": False, "fsdp": "shard_grad_op"},
    "FSDP full_shard offload bf16": {"bf16": True, "tf32": False, "fsdp": "full_shard offload"},
    "FSDP full_shard bf16 + gradient checkpointing": {"bf16": True, "tf32": False, "fsdp": "full_shard",
                                                      "gradient_checkpointing": True},
}
_FSDP_RESULT = "HOOKTRAIN_GPU_FSDP_RESULT"


def fsdp_main(opts: argparse.Namespace, argv: list[str]) -> int:
    """``--fsdp``: launch this script under torchrun (one process per GPU, NCCL) and print, per
    configuration and rank, steps/s and ``torch.cuda.max_memory_allocated``. FSDP runs use the
    bf16 ``MixedPrecisionPolicy`` (parameters in bf16, gradients reduced in fp32). With ``--cpu``
    they run on gloo CPU processes (to test the script; no memory column, no offload)."""
    import json
    import os
    import subprocess

    if "WORLD_SIZE" in os.environ:
        return _fsdp_worker(opts)
    if not opts.cpu and not torch.cuda.is_available():
        print("skipped: no CUDA (torch.cuda.is_available() is False); nothing to check on this machine")
        return 0
    nproc = opts.nproc or (2 if opts.cpu else torch.cuda.device_count())
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        env = {**os.environ, _FSDP_RESULT: result.name, "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, *argv]
        proc = subprocess.run(cmd, env=env)
        rows = json.loads(open(result.name).read() or "[]") if proc.returncode == 0 else []
    where = "CPU (gloo)" if opts.cpu else f"{torch.cuda.get_device_name()} (NCCL)"
    print(f"\nFSDP2 on {nproc} process(es), {where}, torch {torch.__version__}; model: {opts.layers} blocks, "
          f"d={opts.dim}; batch {opts.batch} x {opts.seq} tokens per process\n")
    print("| configuration | rank | steps/s | max_memory_allocated (MiB) | final loss | Linear dtype | check |")
    print("|---|---:|---:|---:|---:|---|---|")
    failed = proc.returncode != 0
    for r in rows:
        if "steps_per_s" not in r:
            print(f"| {r['name']} | {r['rank']} | | | | | {r.get('skipped') or 'FAILED: ' + '; '.join(r['problems'])} |")
            failed |= not r.get("skipped")
            continue
        check = "ok" if not r["problems"] else "FAILED: " + "; ".join(r["problems"])
        failed |= bool(r["problems"])
        print(f"| {r['name']} | {r['rank']} | {r['steps_per_s']:.2f} | {r['peak_mib']:,.0f} | {r['loss']:.4f} "
              f"| {r['dtype']} | {check} |")
    return 1 if failed else 0


def _fsdp_worker(opts: argparse.Namespace) -> int:
    import json
    import os

    import torch.distributed as dist

    if not opts.cpu:  # before run() resets the peak-memory counter: every rank on its own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for name, config in FSDP_CONFIGS.items():
            if opts.only and name not in opts.only:
                continue
            if opts.cpu and "offload" in config.get("fsdp", ""):
                rows.append({"name": name, "skipped": "skipped: offload needs CUDA"})
                continue
            config = {**config, "fsdp_config": {"transformer_layer_cls_to_wrap": ["Block"]}} if "fsdp" in config \
                else config
            try:
                row = run(name, config, opts, out_dir)
            except Exception as exc:  # report every configuration, fail at the end
                row = {"name": name, "problems": [f"{type(exc).__name__}: {exc}"]}
            rows.append(row)
    rank = dist.get_rank() if dist.is_initialized() else 0
    everyone: list[Any] = [None] * (dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.all_gather_object(everyone, [{**r, "rank": rank} for r in rows])
    else:
        everyone = [[{**r, "rank": rank} for r in rows]]
    if rank == 0:
        ordered = [r for i in range(len(rows)) for per_rank in everyone for r in per_rank[i:i + 1]]
        with open(os.environ[_FSDP_RESULT], "w") as fp:
            json.dump(ordered, fp, default=str)
    return 0



def _analytic_flops_per_sample(opts: argparse.Namespace) -> float:
    """6 x (weights of the matrix products) per token, plus attention's 4·T·d per token and
    layer forward, 2.5 times that backward (torch's count for the fused kernels)."""
    d, layers, t = opts.dim, opts.layers, opts.seq
    weights = layers * 12 * d * d + d * opts.vocab
    return t * (6 * weights + 3.5 * 4 * t * d * layers)


def throughput_main(opts: argparse.Namespace) -> int:
    """``--throughput``: the throughput plugin on a CUDA run (bf16 when supported), plugin on and
    off, each under ``torch.cuda.set_sync_debug_mode("warn")``; a table of the synchronising calls
    per run and of the figures the plugin logged. Exit status 1 when the plugin adds a sync or a
    figure is missing."""
    import warnings

    cpu = opts.cpu or not torch.cuda.is_available()
    if cpu and not opts.cpu:
        print("skipped: no CUDA (torch.cuda.is_available() is False); nothing to check on this machine")
        return 0
    name = "CPU" if cpu else torch.cuda.get_device_name()
    bf16 = cpu or torch.cuda.get_device_capability()[0] >= 8
    steps, log_every = opts.warmup + opts.steps, 10
    print(f"{name}, torch {torch.__version__}; model: {opts.layers} blocks, d={opts.dim}, vocab {opts.vocab}; "
          f"batch {opts.batch} x {opts.seq} tokens, {steps} steps, a log every {log_every}, "
          f"{'bf16' if bf16 else 'fp32'}\n")
    rows, failed = {}, False
    with tempfile.TemporaryDirectory() as out_dir:
        for label, extra in (("plugin off", {"disable_plugins": ["throughput"]}), ("plugin on", {})):
            model = TinyGPT(opts.vocab, opts.dim, opts.heads, opts.layers, opts.seq)
            args = TrainingArguments(
                output_dir=out_dir, report_to="none", save_strategy="no", disable_tqdm=True, max_steps=steps,
                per_device_train_batch_size=opts.batch, learning_rate=3e-4, logging_steps=log_every,
                dataloader_num_workers=0 if cpu else 2, seed=0, use_cpu=cpu, bf16=bf16, **extra)
            trainer = Trainer(model=model, args=args, train_dataset=Tokens(opts.batch * steps, opts.seq, opts.vocab))
            if not cpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.set_sync_debug_mode("warn")
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = trainer.train()
            if not cpu:
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
            logs = [e for e in trainer.state.log_history if "loss" in e]
            rows[label] = dict(seconds=seconds, syncs=len(syncs), logs=logs, summary=result.metrics,
                               peak=None if cpu else torch.cuda.max_memory_allocated() / 2**20)
    on, off = rows["plugin on"], rows["plugin off"]
    print("| run | seconds | synchronising calls | per log |\n|---|---:|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {row['seconds']:.2f} | {row['syncs']} | {row['syncs'] / max(len(row['logs']), 1):.1f} |")
    if not cpu and on["syncs"] != off["syncs"]:
        print(f"FAILED: the plugin adds {on['syncs'] - off['syncs']} synchronising calls")
        failed = True
    last = on["logs"][-1]
    wanted = ["samples_per_second", "tokens_per_second", "flops_per_second", "host_peak_rss_mib"]
    wanted += [] if cpu else ["mfu", "device_max_allocated_mib", "device_max_reserved_mib"]
    missing = [k for k in wanted if k not in last]
    if missing:
        print(f"FAILED: the last training log lacks {missing}")
        failed = True
    per_sample = last["flops_per_second"] / last["samples_per_second"]
    analytic = _analytic_flops_per_sample(opts)
    print(f"\nlast window: {last['tokens_per_second']:,.0f} tokens/s, MFU {last.get('mfu', float('nan')):.1%}, "
          f"device max allocated {last.get('device_max_allocated_mib', float('nan')):,.0f} MiB "
          f"(torch.cuda.max_memory_allocated over the run: {on['peak'] or float('nan'):,.0f} MiB)")
    print(f"FLOPs per sample: counted {per_sample:.4g}, analytic {analytic:.4g} "
          f"({per_sample / analytic - 1:+.1%})")
    summary = on["summary"]
    print(f"run averages: {summary.get('train_tokens_per_second', float('nan')):,.0f} tokens/s, "
          f"MFU {summary.get('train_mfu', float('nan')):.1%}; wall time on / off {on['seconds'] / off['seconds']:.3f}")
    return 1 if failed else 0

def checkpoint_main(opts: argparse.Namespace) -> int:
    """Checkpoints written in the background on CUDA: pinned, reused, non-blocking snapshots."""
    if not opts.cpu and not torch.cuda.is_available():
        print("skipped: no CUDA (torch.cuda.is_available() is False); nothing to check on this machine")
        return 0
    from safetensors.torch import load_file

    steps = opts.warmup + opts.steps
    print(f"{'CPU run (testing the script)' if opts.cpu else torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"{opts.layers} blocks, d={opts.dim}, batch {opts.batch} x {opts.seq}; {steps} steps, a save every "
          f"{opts.save_every} steps\n")

    class Watch:
        """Step times after the warm-up; the weights right after each save step (on the CPU)."""

        def __init__(self):
            self.times: list[float] = []
            self.weights: dict[int, dict[str, torch.Tensor]] = {}

        @hookimpl
        def on_step_end(self, trainer, state):
            _sync()
            self.times.append(time.perf_counter())
            if state.global_step % opts.save_every == 0:
                self.weights[state.global_step] = {k: v.detach().cpu().clone()
                                                   for k, v in trainer.model.state_dict().items()}

    rows, failed = [], False
    for name, saving in (("no saves", None), ("save_async=True", True), ("save_async=False", False)):
        with tempfile.TemporaryDirectory() as out_dir:
            watch = Watch()
            args = TrainingArguments(
                output_dir=out_dir, report_to="none", disable_tqdm=True, max_steps=steps,
                per_device_train_batch_size=opts.batch, learning_rate=3e-4, logging_steps=steps, seed=0,
                save_strategy="no" if saving is None else "steps", save_steps=opts.save_every,
                save_async=bool(saving), save_total_limit=None, use_cpu=opts.cpu, bf16=not opts.cpu,
            )
            model = TinyGPT(opts.vocab, opts.dim, opts.heads, opts.layers, opts.seq)
            trainer = Trainer(model=model, args=args, plugins=[watch],
                              train_dataset=Tokens(opts.batch * steps, opts.seq, opts.vocab))
            trainer.train()
            gaps = [b - a for a, b in zip(watch.times[opts.warmup:], watch.times[opts.warmup + 1:], strict=False)]
            row: dict[str, Any] = {"name": name, "steps_per_s": 1 / (sum(gaps) / len(gaps)), "problems": []}
            store = trainer.plugin_manager.get_plugin("checkpoint.store")
            if saving is not None:
                row["per_save_ms"] = 1000 * sorted(store.stats.per_save_s)[len(store.stats.per_save_s) // 2]
                row["snapshot"] = store.stats.snapshot_bytes
                buffers = list(store._buffers._buffers.values())
                if saving and not opts.cpu and not (buffers and all(b.is_pinned() for b in buffers)):
                    row["problems"].append("snapshot buffers not pinned")
                for step, weights in watch.weights.items():
                    saved = load_file(f"{out_dir}/checkpoint-{step}/model.safetensors")
                    if any(not torch.equal(saved[k], v) for k, v in weights.items() if k in saved):
                        row["problems"].append(f"checkpoint-{step} differs from the weights after step {step}")
            rows.append(row)
            failed |= bool(row["problems"])
    print("| run | steps/s | training-thread time per save (ms, median) | snapshot host memory | check |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        check = "ok" if not r["problems"] else "FAILED: " + "; ".join(r["problems"])
        per_save = f"{r['per_save_ms']:.1f}" if "per_save_ms" in r else ""
        snapshot = f"{r['snapshot']:,} B" if r.get("snapshot") else ""
        print(f"| {r['name']} | {r['steps_per_s']:.2f} | {per_save} | {snapshot} | {check} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
