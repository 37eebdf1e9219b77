"""The twelve milestones of the curriculum, and where each one's spec schema lives once implemented."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Milestone:
    id: str
    title: str
    seed_target: str
    spec: str | None = None  # "module:Class" of the pydantic spec; None = not implemented yet

    @property
    def implemented(self) -> bool:
        return self.spec is not None

    def spec_model(self):
        module, cls = self.spec.split(":")
        return getattr(importlib.import_module(module), cls)


MILESTONES: dict[str, Milestone] = {m.id: m for m in [
    Milestone("w01", "GPT from scratch", "WikiText-2 validation perplexity < 55", "impl.w01_gpt.spec:W01Spec"),
    Milestone("w03", "Fine-tuning with Hugging Face", "IMDb acc > 0.90; WritingPrompts ppl < 30; MLM acc > 0.60",
              "impl.w03_finetune.spec:W03Spec"),
    Milestone("w05", "DeepSpeed ZeRO-2", "GPT-2 124M on OpenWebText, val ppl < 30", "impl.w05_deepspeed.spec:W05Spec"),
    Milestone("w07", "LoRA / QLoRA instruction tuning", "held-out Alpaca ROUGE-L > 0.25", "impl.w07_lora.spec:W07Spec"),
    Milestone("w09", "Quantised serving under load", "mean latency < 200 ms at > 20 req/s",
              "impl.w09_serve.spec:W09Spec"),
    Milestone("w11", "RAG with LangChain", "SQuAD dev F1 > 0.6, response time recorded", "impl.w11_rag.spec:W11Spec"),
    Milestone("w13", "Tensor and pipeline parallelism", "2-way TP or 2-stage PP of a 125M GPT, efficiency analysed",
              "impl.w13_parallel.spec:W13Spec"),
    Milestone("w15", "Evaluation with lm-evaluation-harness", "3 open LLMs on >= 5 benchmarks, comparison report",
              "impl.w15_eval.spec:W15Spec"),
    Milestone("w17", "RLHF with TRL", "RLHF model wins > 60% of preference votes against SFT",
              "impl.w17_rlhf.spec:W17Spec"),
    Milestone("w19", "Data cleaning and a custom tokenizer", "32k SentencePiece tokenizer within 10% ppl of GPT-2's",
              "impl.w19_data.spec:W19Spec"),
    Milestone("w21", "Multi-node training in containers", "124M GPT on 2+ nodes, scaling efficiency analysed",
              "impl.w21_infra.spec:W21Spec"),
    Milestone("w23", "Portfolio and interviews", "all projects documented with results",
              "impl.w23_portfolio.spec:W23Spec"),
]}


def get_milestone(milestone_id: str) -> Milestone:
    try:
        return MILESTONES[milestone_id]
    except KeyError:
        raise KeyError(f"unknown milestone {milestone_id!r}; known: {', '.join(MILESTONES)}") from None
