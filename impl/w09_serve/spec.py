"""What a hardware profile says about w09; validated when the profile is loaded.

    w09:
      model: w07:lora                    # the merged model of this profile's w07 LoRA run, or a hub id / dir / fixture:NAME
      instructions: *w07_data            # w07's data section: held-out examples for ROUGE-L and the load prompts
      quantize:
        variants: [int8, nf4]            # bitsandbytes LLM.int8() and 4-bit NF4, against the unquantised model
        ppl_data: {source: offline, corpus: [austen], val_fraction: 0.1}
        ppl_tokens: 2048
        ppl_window: 256
        rouge_examples: 8                # w07's held-out instruction examples, greedy
      serve: {backend: transformers, quantization: none, max_batch_size: 8, batch_wait_ms: 10, ...}
      load: {users: 8, duration_s: 20, max_tokens: [8, 64], fixed_output_length: false, stream: true, prompts: 24}
      targets: {int8_ppl: ..., nf4_ppl: ..., int8_memory: ..., nf4_memory: ..., mean_latency_ms: ...,
                requests_per_s: ..., failed_requests: ...}
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.corpora import DataSource
from impl.core.targets import Target
from impl.w07_lora.spec import InstructionData

QUANTIZATIONS = ("int8", "nf4")  # bitsandbytes: LLM.int8() (8-bit, fp16 outliers) and 4-bit NormalFloat
TARGETS = Literal["int8_ppl", "nf4_ppl", "int8_memory", "nf4_memory", "mean_latency_ms", "requests_per_s",
                  "failed_requests"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextData(DataSource):
    """Held-out text for perplexity: the offline fixture corpora split by document, or a hub dataset's split
    (WikiText-2's test split, the quantisation papers' protocol)."""
    corpus: list[Literal["austen", "brown"]] = []
    val_fraction: float = 0.1
    split: str = "test"  # hub: which split is scored
    text_column: str = "text"


class QuantizeSpec(Strict):
    variants: list[Literal["int8", "nf4"]] = ["int8", "nf4"]
    ppl_data: TextData
    ppl_tokens: int | None = 2048  # the first N held-out tokens (None: all of them)
    ppl_window: int = 256  # non-overlapping windows
    rouge_examples: int = 8  # the first N of w07's held-out examples, scored with w07's greedy decoding
    max_new_tokens: int = 32
    batch_size: int = 8
    # a GPU too small for the unquantised reference (a 7B in bf16 on 12 GB): keep at most this much of it on the
    # GPU and the rest in CPU memory (accelerate's device_map); None: the whole model on the GPU
    unquantised_max_gpu_memory_gb: float | None = None


class ServeSpec(Strict):
    """`python -m impl serve` as the acceptance test starts it."""
    backend: Literal["transformers", "vllm"] = "transformers"
    # the weights served: transformers none | int8 | nf4 (bitsandbytes); vllm: its --quantization (fp8, bitsandbytes)
    quantization: str = "none"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    # transformers: requests join and leave the running batch at each decode step (continuous), or a batch runs
    # to its longest answer before the next starts (static); vllm batches continuously
    batching: Literal["continuous", "static"] = "continuous"
    max_batch_size: int = 8  # transformers: requests generated together; vllm: --max-num-seqs
    max_queue: int = 64  # requests waiting beyond the running batch; more get 429
    batch_wait_ms: float = 10.0  # transformers static: how long the first request of a batch waits for company
    max_prompt_tokens: int = 512  # longer prompts get 400
    max_tokens_limit: int = 256  # a larger max_tokens gets 400
    startup_timeout_s: float = 300.0

    @model_validator(mode="after")
    def _quantization_for_backend(self):
        if self.backend == "transformers" and self.quantization not in ("none", *QUANTIZATIONS):
            raise ValueError(f"backend transformers serves quantization none | int8 | nf4; got {self.quantization!r}")
        return self


class LoadSpec(Strict):
    """The load protocol: locust headless, every user sending requests back to back (no think time), taken in
    turn from a schedule of `prompts` entries: w07's held-out instructions sampled with `seed` (their lengths are
    the prompt-length distribution), each with its max_tokens (fixed, or drawn uniformly from [lo, hi] with the
    same seed)."""
    users: int = 8
    spawn_rate: float = 8.0
    duration_s: int = 10
    # after the window, requests in flight are waited for this long (locust --stop-timeout) and their latency
    # counts: cut off at the window, a slow server's most-queued requests would drop out of its mean latency.
    # One still unfinished then is a failed request.
    drain_s: int = 60
    max_tokens: int | tuple[int, int] = 16
    fixed_output_length: bool = True  # ignore_eos: every answer max_tokens long; false: the model's EOS ends it
    stream: bool = False  # server-sent events: time to first token and inter-token latency are measured
    prompts: int = 16
    seed: int = 0
    endpoint: Literal["/v1/chat/completions", "/v1/completions"] = "/v1/chat/completions"
    # fewer successful requests than this inside the window: no latency is reported (NaN fails every target)
    min_successful_requests: int = 8
    # a reference measured in the same run on the same cores, for targets relative to it (cpu: a machine 15%
    # slower must not fail a correct server): the same model served one request at a time
    reference: Literal["none", "one_at_a_time"] = "none"

    @model_validator(mode="after")
    def _range(self):
        if isinstance(self.max_tokens, tuple) and not 1 <= self.max_tokens[0] <= self.max_tokens[1]:
            raise ValueError(f"max_tokens [lo, hi] needs 1 <= lo <= hi; got {list(self.max_tokens)}")
        return self

    @property
    def max_tokens_bounds(self) -> tuple[int, int]:
        return self.max_tokens if isinstance(self.max_tokens, tuple) else (self.max_tokens, self.max_tokens)


class W09Spec(Strict):
    model: str  # "w07:lora" / "w07:qlora" (that run's merged model), a hub id, a local dir, or fixture:NAME
    instructions: InstructionData  # w07's data: its held-out examples are the ROUGE-L set and the load prompts
    quantize: QuantizeSpec
    serve: ServeSpec = ServeSpec()
    load: LoadSpec = LoadSpec()
    targets: dict[TARGETS, Target]

    @model_validator(mode="after")
    def _load_fits_the_server(self):
        if self.load.max_tokens_bounds[1] > self.serve.max_tokens_limit:
            raise ValueError(f"load.max_tokens {self.load.max_tokens_bounds[1]} exceeds serve.max_tokens_limit "
                             f"{self.serve.max_tokens_limit}: every request of the load test would be refused")
        for name, target in self.targets.items():
            if "one_at_a_time" in target.baselines and self.load.reference != "one_at_a_time":
                raise ValueError(f"target {name} is relative to one_at_a_time: set load.reference: one_at_a_time")
        for name in self.targets:
            if name.endswith(("_ppl", "_memory")) and name.split("_")[0] not in self.quantize.variants:
                raise ValueError(f"target {name} needs {name.split('_')[0]!r} in quantize.variants")
        return self
