"""One w05 training process: the w01 GPT through `deepspeed.initialize` (ZeRO stage 0-3), or through plain
PyTorch DDP for comparison. Launched under torchrun by run.py, one process per GPU (gloo processes on CPU):

    python -m impl train w05 --profile cpu     # the profile's ZeRO training run, then its evaluation

The DeepSpeed config is configs/zero<stage>.json with the profile's batch sizes, gradient clipping and precision
filled in and its `deepspeed:` section merged on top; the run directory keeps the config it ran with. The
optimizer is a torch AdamW handed to DeepSpeed (DeepSpeed's own FusedAdam would need a CUDA/C++ build), the
learning-rate schedule a LambdaLR that DeepSpeed steps at each gradient-accumulation boundary, as DDP does here.

Both engines see the same data: the global batch of step s is a function of (seed, s) (w01's sampler); rank r
takes its contiguous slice of it, then splits that into `grad_accum` micro-batches.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from impl.core.artifacts import environment, write_json
from impl.core.distributed import init_from_env, leave, peak_memory_mb, per_rank, reset_peak_memory, shutdown
from impl.core.profiles import deep_merge
from impl.w01_gpt.data import batch, load_tokenizer, prepare, unigram_ppl
from impl.w01_gpt.model import GPT
from impl.w01_gpt.train import autocast, evaluate, gpt_config, lr_at, make_optimizer, sample
from impl.w05_deepspeed.spec import W05Spec

CONFIGS = Path(__file__).parent / "configs"


def deepspeed_config(spec: W05Spec, world: int) -> dict:
    """configs/zero<stage>.json, filled from the profile; every key of the profile's `deepspeed:` wins."""
    t = spec.train
    config = json.loads((CONFIGS / f"zero{t.zero_stage}.json").read_text())
    config.update(train_micro_batch_size_per_gpu=t.batch_size // (world * t.grad_accum),
                  gradient_accumulation_steps=t.grad_accum, train_batch_size=t.batch_size,
                  gradient_clipping=t.grad_clip)
    config["bf16"] = {"enabled": t.precision == "bf16"}
    deep_merge(config, spec.deepspeed)
    return config


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def base_optimizer(opt) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's ZeRO wrapper (or the optimizer itself)."""
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def memory_held(model: torch.nn.Module, opt) -> dict:
    """Bytes this rank holds, counted tensor by tensor (RSS at toy scale is mostly torch's own libraries):
    parameters (ZeRO-3 keeps only its partition, `ds_tensor`), the optimizer's state (Adam's two moments) and
    the fp32 master copy the optimizer updates when it is not the model's own parameters (ZeRO 1-3)."""
    base = base_optimizer(opt)
    # ZeRO 1-2 and ZeRO-3 name their fp32 partitions differently (ZeRO-3 also empties the torch optimizer's
    # param_groups between steps); DDP and ZeRO-0 update the model's own parameters: no master copy
    masters = getattr(opt, "single_partition_of_fp32_groups", None) or getattr(opt, "fp32_partitioned_groups_flat", None)
    return {
        "param_bytes": _bytes(getattr(p, "ds_tensor", p) for p in model.parameters()),
        # the moments; not the step counters, one scalar per tensor in torch's AdamW, one per flat group in ZeRO's
        "optimizer_state_bytes": _bytes(v for state in base.state.values() for v in state.values()
                                        if torch.is_tensor(v) and v.dim() > 0),
        "master_param_bytes": _bytes(masters or []),
    }


def train_process(spec: W05Spec, run_dir: Path, engine_kind: str, do_eval: bool, same_shard: bool) -> None:
    rank, world, device = init_from_env()
    t = spec.train
    per_rank_seqs = t.batch_size // world
    micro = per_rank_seqs // t.grad_accum
    data = prepare(spec.data, spec.tokenizer)
    torch.manual_seed(t.seed)  # the same initial weights on every rank, in both engines
    model = GPT(gpt_config(spec, data.vocab_size)).to(device)
    opt = make_optimizer(model, spec, torch.optim.AdamW)  # DeepSpeed's ZeRO takes only its tested types
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, spec) / t.lr if t.lr else 0.0)
    if engine_kind == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        ds_config = deepspeed_config(spec, world)
        if rank == 0:
            write_json(run_dir / "ds_config.json", ds_config)
        engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_config)
    else:
        engine = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    stage3 = engine_kind == "deepspeed" and t.zero_stage == 3

    log_path = run_dir / "train_log.jsonl"
    if rank == 0:
        log_path.write_text("")
    tokens_per_step = t.batch_size * spec.model.context
    timed_seconds, wall0 = 0.0, time.perf_counter()
    for step in range(t.steps):
        t0 = time.perf_counter()
        lr = base_optimizer(opt).param_groups[0]["lr"]
        x, y = batch(data.train, t.seed, step, t.batch_size, spec.model.context)
        shard = 0 if same_shard else rank  # sabotage: every rank trains on rank 0's slice
        x, y = (v[shard * per_rank_seqs:(shard + 1) * per_rank_seqs] for v in (x, y))
        step_loss = torch.zeros((), device=device)
        for m in range(t.grad_accum):
            xs, ys = (v[m * micro:(m + 1) * micro].to(device) for v in (x, y))
            if engine_kind == "deepspeed":
                _, loss = engine(xs, ys)
                engine.backward(loss)  # scales by 1/grad_accum; reduces at the boundary
                engine.step()  # the optimizer and scheduler step only at the boundary
            else:
                last = m == t.grad_accum - 1
                with (nullcontext() if last or world == 1 else engine.no_sync()), autocast(spec, device):
                    _, loss = engine(xs, ys)
                (loss / t.grad_accum).backward()
            step_loss += loss.detach().float() / t.grad_accum
        if engine_kind == "deepspeed":
            grad_norm = engine.get_global_grad_norm()
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(step_loss)  # gloo has no AVG
            step_loss /= world
        loss_value = step_loss.item()
        if step == 0:
            reset_peak_memory(device)  # the peak of the steady state, after the first step allocated everything
        else:
            timed_seconds += time.perf_counter() - t0
        if rank == 0 and (step % t.log_every == 0 or step == t.steps - 1):
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": loss_value, "lr": lr,
                                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                                    "tokens": (step + 1) * tokens_per_step}) + "\n")
    train_seconds = time.perf_counter() - wall0
    held = {k: per_rank(v, device) for k, v in memory_held(model, opt).items()}
    peak = per_rank(peak_memory_mb(device), device)
    metrics = {
        "engine": engine_kind, "zero_stage": t.zero_stage if engine_kind == "deepspeed" else None,
        "world_size": world, "backend": dist.get_backend() if dist.is_initialized() else None,
        "device": device.type, "precision": t.precision, "params": model.num_params(),
        "tokens_per_step": tokens_per_step, "steps": t.steps, "train_seconds": train_seconds,
        "train_tokens_per_s": tokens_per_step * (t.steps - 1) / timed_seconds if timed_seconds else float("nan"),
        "device_hours": train_seconds * world / 3600, "peak_memory_mb_per_rank": peak,
        **{f"{k}_per_rank": v for k, v in held.items()}, "data": data.description,
    }
    # ZeRO-3: every rank joins the gather of the full weights; rank 0 saves and evaluates them
    gathered = nullcontext()
    if stage3:
        import deepspeed  # deepspeed.zero is an attribute of the package, not an importable module

        gathered = deepspeed.zero.GatheredParameters(list(model.parameters()))
    with gathered:
        if rank == 0:
            _finish(spec, run_dir, model, data, device, do_eval, metrics)
    if world > 1:
        dist.barrier()  # nobody tears the group down while rank 0 still writes
    shutdown()


def _finish(spec: W05Spec, run_dir: Path, model: GPT, data, device, do_eval: bool, metrics: dict) -> None:
    """The artifacts of w01's layout (model.safetensors, model_config.json, tokenizer.json) and metrics.json."""
    from safetensors.torch import save_model

    # a plain fp32 copy: DeepSpeed's parameters are views into its flat buffers (safetensors refuses those),
    # bf16 under DeepSpeed's bf16 mode
    trained = GPT(model.cfg).to(device)
    trained.load_state_dict({k: v.detach().float().clone() for k, v in model.state_dict().items()})
    model = trained
    save_model(model, str(run_dir / "model.safetensors"))
    (run_dir / "model_config.json").write_text(json.dumps(vars(model.cfg)))
    (run_dir / "tokenizer.json").write_bytes((data.tokenizer_dir / "tokenizer.json").read_bytes())
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    metrics["final_train_loss"] = log[-1]["loss"] if log else None
    if do_eval:
        metrics.update(evaluate(model, data.val, spec.model.context, spec.eval.stride, spec.eval.max_tokens, device))
        metrics["unigram_val_ppl"] = unigram_ppl(data.train, data.val, data.vocab_size, spec.eval.max_tokens)
        metrics["sample"] = sample(model, load_tokenizer(data.tokenizer_dir), device)
    write_json(run_dir / "env.json", environment())
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run complete


def main() -> None:  # torchrun entry point; run.py writes job.json
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    a = p.parse_args()
    job = json.loads((a.run_dir / "job.json").read_text())
    spec = W05Spec.model_validate(job["spec"])
    train_process(spec, a.run_dir, job["engine"], job["evaluate"], job["same_shard"])
    leave()


if __name__ == "__main__":
    main()
