"""The policy: a causal LM (GPT-2 from the hub, or a small GPT2LMHeadModel built from config), its tokenizer,
fixed-length sampling and per-token log-probabilities.

Every prompt has the same number of tokens and every answer exactly `answer_tokens` (the end-of-text token is
masked while sampling), so rollouts need no padding: a batch is one (B, prompt + answer) tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.core.hf import load_model, load_tokenizer


EOT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int, out):
    """A byte-level BPE (GPT-2's scheme) of `vocab_size` tokens with one special token, end-of-text, saved in
    `out` as a transformers tokenizer directory."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[EOT], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOT, bos_token=EOT, pad_token=EOT)
    tok.save_pretrained(out)
    return tok


def train_word_tokenizer(texts: list[str], vocab_size: int, out):
    """A word-level vocabulary (the `vocab_size` most frequent words and punctuation marks, the rest <unk>) with
    end-of-text, saved in `out`: a small policy sampling from it writes words, never broken pieces of words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, punctuation attached
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[EOT, "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, pad_token=EOT, unk_token="<unk>")
    fast.save_pretrained(out)
    return fast


def new_policy(spec, tok):
    """The model before SFT, for the policy's tokenizer `tok`."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    p = spec.policy
    if p.model:
        model = load_model(AutoModelForCausalLM, p.model, dtype=torch.float32)
    else:
        torch.manual_seed(spec.sft.seed)
        s = p.scratch
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=max(64, spec.prompt_tokens + spec.answer_tokens),
                                           n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, resid_pdrop=0.0,
                                           embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eos_token_id,
                                           eos_token_id=tok.eos_token_id))
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return model


def load_policy(model_dir):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(model_dir))
    return load_model(AutoModelForCausalLM, str(model_dir), dtype=torch.float32), tok


@torch.no_grad()
def sample(model, prompts: torch.Tensor, n_new: int, temperature: float, generator: torch.Generator,
           banned: int | list[int] | None = None) -> torch.Tensor:
    """prompts (B, P) -> answers (B, n_new), sampled token by token from softmax(logits / temperature) with the KV
    cache; `banned` (end-of-text, and <unk> where the vocabulary has one) never drawn, so every answer has n_new
    tokens."""
    model.eval()
    out = model(prompts, use_cache=True)
    past, logits, answers = out.cache, out.logits[:, -1], []  # transformers 5: `cache` (was past_key_values)
    for _ in range(n_new):
        logits = logits.float() / max(temperature, 1e-6)
        if banned is not None:
            logits[:, banned] = float("-inf")
        probs = F.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(prompts.device)
        answers.append(nxt)
        out = model(nxt, cache=past, use_cache=True)
        past, logits = out.cache, out.logits[:, -1]
    return torch.cat(answers, dim=1)


def answer_logprobs(logits: torch.Tensor, sequences: torch.Tensor, n_answer: int, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each answer token under the logits of a forward over the whole sequence: (B, n_answer).
    The logits at position t predict token t+1, so the answer's predictions start one before it."""
    logits = logits[:, -n_answer - 1:-1].float() / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 2, sequences[:, -n_answer:, None]).squeeze(-1)


def never_sampled(tok) -> list[int]:
    """End-of-text (answers have a fixed length) and the unknown word (it decodes to nothing)."""
    return [t for t in (tok.eos_token_id, tok.unk_token_id) if t is not None]


def generate_texts(model, tok, prompts: list[list[int]], n_new: int, temperature: float, seed: int,
                   batch_size: int = 64) -> list[list[int]]:
    """Answers (token ids) for many prompts, in batches, seeded: the same model, prompts and seed give the same
    answers (the lr-0 PPO twin answers exactly as its SFT policy)."""
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    answers = []
    for i in range(0, len(prompts), batch_size):
        batch = torch.tensor(prompts[i:i + batch_size], device=dev)
        answers += sample(model, batch, n_new, temperature, g, never_sampled(tok)).tolist()
    return answers


@torch.no_grad()
def text_logprobs(model, tok, prompts: list[str], answers: list[str], batch_size: int = 64) -> list[float]:
    """Summed log-probability of each answer's tokens given its prompt (texts, tokenised apart and joined)."""
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        p_ids = tok(prompts[i:i + batch_size])["input_ids"]
        a_ids = tok(answers[i:i + batch_size])["input_ids"]
        seqs = [p + a for p, a in zip(p_ids, a_ids)]
        width = max(map(len, seqs))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        batch = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=dev)
        logp = F.log_softmax(model(batch).logits[:, :-1].float(), -1)
        token = torch.gather(logp, 2, batch[:, 1:, None]).squeeze(-1)  # right padding: earlier positions unaffected
        out += [token[b, len(p) - 1:len(p) - 1 + len(a)].sum().item() for b, (p, a) in enumerate(zip(p_ids, a_ids))]
    return out
