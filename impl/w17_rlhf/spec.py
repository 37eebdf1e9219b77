"""What a hardware profile says about w17 (RLHF); validated when the profile is loaded.

    w17:
      data: {source: offline, corpus: [pang-lee]}   # or {source: hub, hub_path: stanfordnlp/imdb, split: train}
      policy: {scratch: {n_layer: 4, n_head: 4, n_embd: 128}}   # or {model: openai-community/gpt2}
      prompt_tokens: 4
      answer_tokens: 16
      sft: {steps: 600, batch_size: 32, lr: 1.0e-3}
      pairs: {prompts: 512, temperature: 1.0, labelled_fraction: 0.5, heldout_fraction: 0.25}
      reward: {epochs: 2, batch_size: 32, lr: 5.0e-4}
      ppo: {iterations: 40, batch_size: 32, lr: 1.0e-4, kl_coef: 0.05, ...}
      judge: {sentiment_encoder: fixture:minilm, fluency_model: fixture:smollm2}
      test_prompts: 128
      targets: {win_rate: ..., fluency_drop: ..., diversity: ..., pair_accuracy: ...}
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.corpora import DataSource
from impl.core.targets import Target


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptData(DataSource):
    """Texts with human sentiment labels (data.py): offline the `pang-lee` sentences; hub a dataset with a text and
    a 0/1 label column. A text goes wholly to the test side (`val_fraction`) or the training side by a hash of its
    id."""
    corpus: list[Literal["pang-lee"]] = []
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"
    val_fraction: float = 0.1


class Scratch(Strict):
    """A GPT2LMHeadModel built from this config, trained here."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128


class PolicySpec(Strict):
    model: str | None = None  # a pretrained causal LM (hub id, directory, fixture:NAME) fine-tuned by SFT
    scratch: Scratch | None = None  # or a small GPT-2 built from config
    # only for `scratch` (a pretrained model brings its own): "words:N", the N most frequent words (a small policy
    # then writes whole words), "bpe:N", a byte-level BPE of N tokens trained on the
    # training texts (a small output layer is most of the speed on a CPU), or a tokenizer directory / fixture
    tokenizer: str = "bpe:4096"

    @model_validator(mode="after")
    def _one(self):
        if (self.model is None) == (self.scratch is None):
            raise ValueError("policy needs exactly one of 'model' (pretrained) or 'scratch' (built from config)")
        return self


class SFTSpec(Strict):
    """Stage 1: next-token training on prompt+answer windows cut from training sentences."""
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    seed: int = 0


class PairsSpec(Strict):
    """Stage 2a: for each of `prompts` training prompts the SFT policy answers twice at one `temperature` (so
    temperature cannot be what separates them); the labeller, a sentiment classifier (TF-IDF + logistic regression)
    trained on the human labels of `labelled_fraction` of the training texts, names the more positive one chosen.
    Neither the judge nor any likelihood labels a pair."""
    prompts: int = 512
    temperature: float = 1.0
    labelled_fraction: float = 0.5
    # a pair whose answers the labeller scores closer than this in P(positive) is dropped: a coin flip, not a label
    min_margin: float = 0.1
    heldout_fraction: float = 0.25  # pairs (by prompt) kept out of reward training, for its pair accuracy
    file: str | None = None  # a preference JSONL (prompt, chosen, rejected) to use instead of generating pairs
    seed: int = 0


class RewardSpec(Strict):
    """Stage 2b: TRL's RewardTrainer on the pairs; the reward model starts from the SFT policy's weights."""
    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 5e-4
    seed: int = 0


class PPOSpec(Strict):
    """Stage 3: PPO against the reward model (see ppo.py)."""
    iterations: int = 40
    batch_size: int = 32  # rollouts (prompts) per iteration
    minibatch_size: int = 16
    epochs: int = 4  # PPO epochs over each batch of rollouts
    lr: float = 1e-4
    temperature: float = 1.0  # the rollout policy samples at this temperature (and the test answers too)
    kl_coef: float = 0.05  # beta: per-token penalty beta * (log pi - log pi_ref)
    clip: float = 0.2  # policy ratio clip
    clip_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = True
    max_grad_norm: float = 1.0
    seed: int = 0


class GRPOSpec(Strict):
    """The comparison row: TRL's GRPOTrainer on the same reward model from the same SFT policy (grpo.py)."""
    steps: int = 20
    batch_size: int = 32  # completions per step: batch_size / num_generations prompts
    num_generations: int = 4
    lr: float = 1e-4
    beta: float = 0.1  # KL coefficient to the reference
    seed: int = 0


class JudgeSpec(Strict):
    """The win-rate judge, a stand-in for the human raters: a logistic-regression probe on `sentiment_encoder`'s
    sentence embeddings, fit on the human sentiment labels the labeller never saw (judge.py; VADER's lexicon beside
    it as a second opinion, not gated). The fluency judge: a pretrained LM's mean per-token log-likelihood of an
    answer given its prompt."""
    sentiment_encoder: str = "fixture:minilm"
    fluency_model: str = "fixture:smollm2"
    batch_size: int = 32


class W17Spec(Strict):
    data: PromptData
    policy: PolicySpec
    prompt_tokens: int = 8
    answer_tokens: int = 16
    sft: SFTSpec = SFTSpec()
    pairs: PairsSpec = PairsSpec()
    reward: RewardSpec = RewardSpec()
    ppo: PPOSpec = PPOSpec()
    judge: JudgeSpec = JudgeSpec()
    grpo: GRPOSpec | None = None  # None: no comparison run
    # the TRL trainers' (RewardTrainer, GRPOTrainer) precision and checkpointing, which TRL defaults to bf16 and on:
    # both break or crawl on a CPU. bf16 needs a GPU. The hand-written SFT and PPO loops run fp32.
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    test_prompts: int = 128
    seed: int = 0  # the test answers' sampling seed
    examples_in_report: int = 6
    targets: dict[Literal["win_rate", "fluency_drop", "diversity", "pair_accuracy"], Target]
