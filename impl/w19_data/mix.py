"""The raw, messy mix the cpu form cleans: real offline sources written as WARC and JSONL records, so that
datatrove's own readers read them, plus planted duplicates and junk whose labels are known.

    raw/warc/web-00000.warc.gz   HTTP responses: HTML mails (SpamAssassin), novel chapters wrapped in a page's
                                 boilerplate (navigation, cookie banner, footer), a share of the planted junk
    raw/jsonl/00-sources.jsonl   mails with their headers, GCIDE entries (dictd markup), fortunes, novels, junk
    raw/jsonl/99-copies.jsonl    planted exact and near copies of clean documents (after their originals)
    labels.json                  {"clean": [...], "junk": {id: kind}, "dup_pairs": [{original, copy, kind, band,
                                 jaccard}, ...]}

Near copies come in bands of 5-gram Jaccard similarity (0.95 ... 0.55), so that what MinHash-LSH detects can be
set against its curve P(s) = 1 - (1 - s^r)^b; each pair's own similarity is measured with the shingles datatrove
hashes. Junk comes in kinds a filter was written against (JUNK_KINDS) and kinds none was (UNSEEN_JUNK_KINDS).
"""
from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

from impl.core.fixtures import read_documents
from impl.w19_data.spec import MixSpec

JUNK_KINDS = ("symbols", "repeated_lines", "word_salad", "boilerplate", "code", "lorem_ipsum", "bullets", "too_short")
# no filter rule was written against these: what the filters catch of them is measured, not built in
UNSEEN_JUNK_KINDS = ("spam_body", "shuffled_sentences", "boilerplate_page")
STOP = {"the", "be", "to", "of", "and", "that", "have", "with", "a", "in", "is", "it", "was", "for", "on", "as",
        "i", "he", "she", "you", "his", "her", "not", "but", "at", "by", "had", "this", "which", "from", "or"}
PAGE = """<!DOCTYPE html><html><head><title>{title}</title><script>var _gaq = _gaq || []; _gaq.push(['_trackPageview']);</script>
<style>body {{ font-family: serif; }}</style></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/books">Books</a></li><li><a href="/about">About us</a></li>
<li><a href="/contact">Contact</a></li><li><a href="/login">Log in</a></li></ul></nav>
<div class="cookie-banner">We use cookies to improve your experience. By continuing you accept our cookie policy.
<button>Accept</button></div>
<article><h1>{title}</h1>
{body}
</article>
<aside><h3>Popular posts</h3><ul><li><a href="/p/1">Ten tips for reading more</a></li><li><a href="/p/2">Our summer
sale</a></li></ul></aside>
<footer>Copyright 2024 Example Books Ltd. All rights reserved. | <a href="/privacy">Privacy policy</a> |
<a href="/terms">Terms of use</a></footer></body></html>"""


def _html_page(title: str, text: str) -> str:
    paras = "\n".join(f"<p>{_escape(p)}</p>" for p in text.split("\n\n") if p.strip())
    return PAGE.format(title=_escape(title), body=paras)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def excerpt(doc: dict, max_chars: int) -> dict:
    """The document's opening paragraphs, as many as fit in `max_chars` (at least one; 0: the whole text)."""
    if not max_chars or len(doc["text"]) <= max_chars:
        return doc
    kept, size = [], 0
    for para in doc["text"].split("\n\n"):
        if kept and size + len(para) > max_chars:
            break
        kept.append(para)
        size += len(para) + 2
    return {**doc, "text": "\n\n".join(kept)}


def _html_part(mail: str) -> str | None:
    m = re.search(r"<html.*?</html>", mail, flags=re.S | re.I)
    return m.group(0) if m else None


def junk_document(kind: str, rng: random.Random, vocab: list[str]) -> str:
    """One planted junk document of a kind each cleaning stage is meant to catch."""
    content = [w for w in vocab if w not in STOP]
    words = lambda n: " ".join(rng.choice(content) for _ in range(n))  # noqa: E731
    if kind == "symbols":  # Gopher quality: symbol-to-word ratio
        return "\n".join(" ".join(rng.choice(["#", "###", "...", "@@", "#" * rng.randint(2, 6), rng.choice(content)])
                                  for _ in range(12)) for _ in range(20))
    if kind == "repeated_lines":  # Gopher repetition: duplicated lines
        line = f"BEST {words(3).upper()} DEALS ONLINE - buy the {words(2)} now and save big on it today!"
        return "\n".join([line] * 40)
    if kind == "word_salad":  # Gopher quality: too few stop words
        return ".\n".join(words(15).capitalize() for _ in range(20)) + "."
    if kind == "boilerplate":  # C4: policy / cookie / javascript lines, then too few sentences left
        lines = ["This website uses cookies to ensure you get the best experience.",
                 "By using this site you agree to our privacy policy and terms of use.",
                 "Please enable javascript in your browser to view this page.",
                 "Read our cookie policy to learn more.", "Accept all cookies or manage your preferences.",
                 "See our terms of use and privacy policy for details."]
        return "\n".join(rng.sample(lines, len(lines)) * 3)
    if kind == "code":  # C4: curly brackets
        fns = [f"function {rng.choice(content)}{i}(a, b) {{ var x = a + b; if (x > {i}) {{ return x; }} return "
               f"b; }}" for i in range(25)]
        return "\n".join(fns)
    if kind == "lorem_ipsum":  # C4: placeholder text
        base = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
                "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco.")
        return "\n\n".join(f"{base} The {words(6)} of the {words(4)} is in the {words(3)}." for _ in range(10))
    if kind == "bullets":  # Gopher quality: lines starting with bullets
        return "\n".join(f"\u2022 {words(6)} for only ${rng.randint(5, 99)}.99 with the {words(2)}" for _ in range(40))
    if kind == "too_short":  # Gopher quality: fewer than 50 words
        return f"Home | {words(2)} | Contact | Log in | Cart (0) | the {words(3)}"
    raise ValueError(f"unknown junk kind {kind!r}")


def unseen_junk_document(kind: str, rng: random.Random, spam: list[str], clean: list[str]) -> str:
    """Junk of a kind no filter rule was written against."""
    if kind == "spam_body":  # a spam mail's body, headers dropped: fluent advertising prose
        return rng.choice(spam)
    if kind == "shuffled_sentences":  # a clean text's words shuffled within each sentence: stop words all kept
        sentences = re.split(r"(?<=[.!?])\s+", rng.choice(clean))
        out = []
        for sentence in sentences:
            words = sentence.rstrip(".!?").split()
            rng.shuffle(words)
            out.append(" ".join(words).capitalize() + ".")
        return " ".join(out)
    if kind == "boilerplate_page":  # navigation, cookie banner and footer with an empty article
        return ""  # written as an HTML page around nothing
    raise ValueError(f"unknown junk kind {kind!r}")


def _spam_body(mail: str) -> str | None:
    """The plain-text body of a spam mail (after the headers), or None when it is HTML or too short."""
    body = mail.split("\n\n", 1)[1] if "\n\n" in mail else ""
    if "<" in body or len(body.split()) < 80:
        return None
    return body.strip()


def substitution_rate(jaccard: float, n_grams: int) -> float:
    """The share of words to replace so that the n-gram sets of a text and its copy have about this Jaccard
    similarity: an n-gram survives when none of its n words changed, u = (1 - q)^n, and J = u / (2 - u)."""
    u = 2 * jaccard / (1 + jaccard)
    return 1 - u ** (1 / n_grams)


def near_copy(text: str, rng: random.Random, rate: float) -> str:
    """`rate` of the words replaced by another word of the same text, and a reposting header line."""
    paras = text.split("\n\n")
    pool = text.split()
    out = [" ".join(rng.choice(pool) if rng.random() < rate else w for w in p.split(" ")) for p in paras]
    return "Reposted from the archive, with corrections.\n\n" + "\n\n".join(out)


def shingler(minhash):
    """datatrove's MinHash signature step for `minhash` (its MinhashConfig), used only for `get_shingles`: what the
    pipeline's MinHash hashes (nothing is written to its output folder)."""
    import tempfile

    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    return MinhashDedupSignature(tempfile.gettempdir(), minhash)


def shingle_jaccard(a: str, b: str, signature) -> float:
    """Jaccard similarity of two texts' shingle sets, as `signature` (a `shingler`) hashes them."""
    sa, sb = (set(signature.get_shingles(t).ravel().tolist()) for t in (a, b))
    return len(sa & sb) / max(1, len(sa | sb))


def _warc_response(writer, uri: str, record_id: str, html: str) -> None:
    from warcio.statusandheaders import StatusAndHeaders

    payload = html.encode("utf-8")
    http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                       ("Content-Length", str(len(payload)))], protocol="HTTP/1.1")
    record = writer.create_warc_record(uri, "response", payload=io.BytesIO(payload), http_headers=http,
                                       warc_headers_dict={"WARC-Record-ID": record_id,
                                                          "WARC-Identified-Payload-Type": "text/html"})
    writer.write_record(record)


def build(spec: MixSpec, out: Path, minhash) -> dict:
    """Write the raw mix under `out` (raw/, labels.json); returns the labels and a description. `minhash`:
    datatrove's MinhashConfig, whose shingles measure each planted near copy's similarity."""
    from warcio.warcwriter import WARCWriter

    rng = random.Random(spec.seed)
    warc_dir, jsonl_dir = out / "raw" / "warc", out / "raw" / "jsonl"
    warc_dir.mkdir(parents=True), jsonl_dir.mkdir(parents=True)
    all_mails = read_documents("spam-assassin", "mails.jsonl")
    mails = rng.sample(all_mails, spec.mails)
    spam = sorted({b for m in all_mails if "spam" in m["group"] and (b := _spam_body(m["text"]))})
    gcide = rng.sample(read_documents("gcide", "entries.jsonl"), spec.gcide)
    fortunes = rng.sample(read_documents("fortunes", "fortunes.jsonl"), spec.fortunes)
    clean = [excerpt(d, spec.clean_max_chars) for d in rng.sample(read_documents("austen"), spec.austen_chapters)
             + rng.sample(read_documents("brown"), spec.brown_documents)]
    vocab = sorted({w.lower() for d in clean[:20] for w in re.findall(r"[A-Za-z]{3,}", d["text"])}) or \
        ["market", "river", "window", "garden", "letter", "season", "engine", "silver", "morning", "harbour"]
    labels = {"clean": [], "junk": {}, "dup_pairs": []}
    records = []  # (id, text, html?) in reading order
    for m in mails:
        html = _html_part(m["text"])
        records.append((m["id"], m["text"], html))
    records += [(g["id"], g["text"], None) for g in gcide] + [(f["id"], f["text"], None) for f in fortunes]
    for i, d in enumerate(clean):
        labels["clean"].append(d["id"])
        records.append((d["id"], d["text"], _html_page(d["id"], d["text"]) if i % 3 == 0 else None))
    for i in range(spec.junk):
        kind = JUNK_KINDS[i % len(JUNK_KINDS)]
        jid = f"junk/{kind}/{i}"
        labels["junk"][jid] = kind
        text = junk_document(kind, rng, vocab)
        records.append((jid, text, _html_page(kind, text) if i % 2 else None))
    for i in range(spec.unseen_junk):
        kind = UNSEEN_JUNK_KINDS[i % len(UNSEEN_JUNK_KINDS)]
        jid = f"junk/{kind}/{spec.junk + i}"
        labels["junk"][jid] = kind
        text = unseen_junk_document(kind, rng, spam, [d["text"] for d in clean])
        records.append((jid, text, _html_page("Welcome", text) if kind == "boilerplate_page" else None))
    rng.shuffle(records)
    # duplicates: originals among the clean documents kept as plain JSONL text (an HTML original's extracted text
    # would differ from its copy by whatever trafilatura keeps)
    plain_clean = [r for r in records if r[0] in set(labels["clean"]) and r[2] is None]
    bands = [None] * spec.exact_duplicates + [b for b in spec.near_duplicate_bands
                                              for _ in range(spec.near_duplicates_per_band)]
    if len(bands) > len(plain_clean):
        raise ValueError(f"{len(bands)} planted copies need as many plain clean originals; the mix has "
                         f"{len(plain_clean)}: raise austen_chapters or brown_documents")
    copies, signature = [], shingler(minhash)
    for i, ((oid, text, _), band) in enumerate(zip(rng.sample(plain_clean, len(bands)), bands)):
        cid = f"copy/{'exact' if band is None else f'near-{band}'}/{i}"
        copy = text if band is None else near_copy(text, rng, substitution_rate(band, minhash.n_grams))
        copies.append({"id": cid, "text": copy})
        labels["dup_pairs"].append({"original": oid, "copy": cid, "kind": "exact" if band is None else "near",
                                    "band": band, "jaccard": 1.0 if band is None else
                                    round(shingle_jaccard(text, copy, signature), 4)})

    with open(warc_dir / "web-00000.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True)  # one gzip member per record, as Common Crawl's WARCs
        for rid, _, html in records:
            if html is not None:
                _warc_response(writer, f"http://example.org/{rid}", f"<urn:w19:{rid}>", html)
    with open(jsonl_dir / "00-sources.jsonl", "w") as f:
        for rid, text, html in records:
            if html is None:
                f.write(json.dumps({"id": rid, "text": text}, ensure_ascii=False) + "\n")
    with open(jsonl_dir / "99-copies.jsonl", "w") as f:
        for c in copies:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    n_html = sum(html is not None for _, _, html in records)
    raw_bytes = sum(p.stat().st_size for p in (out / "raw").rglob("*") if p.is_file())
    labels["description"] = (
        f"raw mix (seed {spec.seed}): {spec.mails} SpamAssassin mails, {spec.gcide} GCIDE entries, {spec.fortunes} "
        f"fortunes, {spec.austen_chapters} Austen chapters + {spec.brown_documents} Brown documents (labelled "
        f"clean), {spec.junk} planted junk of {len(JUNK_KINDS)} kinds the filters target + {spec.unseen_junk} of "
        f"{len(UNSEEN_JUNK_KINDS)} kinds none does, {spec.exact_duplicates} exact + "
        f"{spec.near_duplicates_per_band} x {len(spec.near_duplicate_bands)} near planted copies (5-gram Jaccard "
        f"bands {', '.join(map(str, spec.near_duplicate_bands))}); {n_html} records as WARC HTML responses, the rest "
        f"JSONL; "
        f"{raw_bytes / 1e6:.1f} MB on disk")
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    return labels
