"""w15 — evaluate open LLMs with lm-evaluation-harness (`lm_eval.simple_evaluate`) on several benchmarks and report
per-task scores, stderrs and averages side by side, with a protocol check that recomputes one task outside it.
"""
