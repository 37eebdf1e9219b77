"""Our own w01 GPT as an lm-eval model: a registered `LM` subclass with the three request types the harness sends.

    from impl.w15_eval.gpt_lm import GPTLM
    lm = GPTLM(model, tokenizer)                          # a trained impl.w01_gpt GPT and its tokenizer
    lm_eval.simple_evaluate(model=lm, tasks=[...], task_manager=...)

`loglikelihood` scores a continuation after its context exactly as HFLM does for a causal LM (the pair encoded
whole, the context's tokens split off; the window left-truncated to the model's context); `loglikelihood_rolling`
is lm-eval's rolling-window perplexity protocol; `generate_until` decodes greedily until a stop string.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval import utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


@register_model("llm-milestones-gpt")
class GPTLM(LM):
    def __init__(self, model, tokenizer, batch_size: int = 16, device: str = "cpu", eot: str = "<|endoftext|>"):
        super().__init__()
        self.model, self.tok = model.eval().to(device), tokenizer
        self._dev = torch.device(device)
        self.batch_size, self._dev = int(batch_size), torch.device(device)
        self.max_length = model.cfg.context
        self.eot_id = tokenizer.convert_tokens_to_ids(eot)

    # --- helpers ---------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())  # trailing spaces belong to the continuation (as HFLM)
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole, ctx = self._encode(context + continuation), self._encode(context)
        return ctx, whole[len(ctx):]

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, whether it is the greedy continuation) per pair."""
        out = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i:i + self.batch_size]
            too_long = max(len(cont) for _, cont in chunk)
            if too_long > self.max_length:  # no window holds it: scoring a cut continuation would be another metric
                raise ValueError(f"a continuation of {too_long} tokens is longer than the model's context of "
                                 f"{self.max_length}: this task's choices cannot be scored by this model")
            windows = [(ctx + cont)[-(self.max_length + 1):][:-1] for ctx, cont in chunk]
            width = max(len(w) for w in windows)
            batch = torch.tensor([w + [0] * (width - len(w)) for w in windows], device=self._dev)
            logp = F.log_softmax(self.model(batch)[0].float(), dim=-1)  # right padding: earlier positions unchanged
            for row, w, (_, cont) in zip(logp, windows, chunk):
                n = len(cont)
                pos = row[len(w) - n:len(w)]
                target = torch.tensor(cont, device=self._dev)
                out.append((float(pos.gather(1, target[:, None]).sum()), bool((pos.argmax(-1) == target).all())))
        return out

    # --- the harness's requests -------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for context, continuation in (r.args for r in requests):
            if context == "":
                cont = self._encode(continuation)
                pairs.append(([self.eot_id], cont))
            else:
                pairs.append(self._encode_pair(context, continuation))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for (text,) in (r.args for r in requests):
            windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self._encode(text), prefix_token=self.eot_id, max_seq_len=self.max_length, context_len=1))
            results.append(sum(ll for ll, _ in self._score(list(windows))))
        return results

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        for context, kwargs in (r.args for r in requests):
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or [self.tok.decode([self.eot_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 64))
            ids = self._encode(context) or [self.eot_id]
            new: list[int] = []
            text = ""
            for _ in range(max_new):
                window = (ids + new)[-self.max_length:]
                logits = self.model(torch.tensor([window], device=self._dev))[0][0, -1]
                nxt = int(logits.argmax())
                if nxt == self.eot_id:
                    break
                new.append(nxt)
                text = self.tok.decode(new)
                if any(s in text for s in until):
                    break
            for s in until:
                text = text.split(s)[0]
            results.append(text)
        return results
