"""Text as Breton's second resource: an n-gram language model built from plain text, and its shallow fusion into
Whisper's beam search.

    text files ──► normalise each line (the scoring normaliser) ──► drop lines equal to a held-out sentence
      ──► count n-grams ──► modified Kneser–Ney (`estimate`) ──► ARPA file (KenLM's query API loads it) + OUT.json

Estimation is interpolated modified Kneser–Ney as KenLM's `lmplz` computes it (Heafield et al. 2013): adjusted
counts (distinct left extensions, except n-grams that start with `<s>` and those of the highest order), three
discounts per order from the counts of counts (0.5, 1, 1.5 where they cannot be estimated, as `lmplz
--discount_fallback`), unigrams interpolated with the uniform distribution, `<unk>` given that mass. On the same
text the ARPA file matches `lmplz`'s to float precision (tests/test_lm.py, against a file lmplz wrote).

Fusion (`LMFusion`, a transformers logits processor): a hypothesis is ranked by its acoustic log-probability +
α · LM log10-probability of its normalised words + β · word count (Whisper-LM, arXiv 2503.23542), from its 4th
text token on. Each step adds the change of that bonus to the candidate tokens, so beam search's running sums
equal it; a word is scored when the token after it starts a new word (or at the end, with `</s>`), so most
candidates cost nothing and every scored word is one KenLM lookup from a cached state.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor

from wdsbr.evaluation import generate_from_encoded
from wdsbr.scoring import Prediction, score

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback's defaults
SETTINGS_FILE = "lm.json"  # beside a model: the α and β tools/tune_lm.py chose for it
FIRST_TOKEN = 4  # the LM joins from a hypothesis's 4th text token on (Whisper-LM's threshold)
CACHE_ENTRIES = 200_000  # decoded texts and scored hypotheses kept between steps (then the caches start again)


# ---------------------------------------------------------------------------------------------- estimation
def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Raw counts: [n-1] holds every n-gram (a tuple of words) seen in `<s> words </s>`; `<s>` is only history."""
    counts = [Counter() for _ in range(order)]
    for words in sentences:
        sequence = (BOS, *words, EOS)
        for end in range(1, len(sequence)):
            for n in range(1, min(order, end + 1) + 1):
                counts[n - 1][sequence[end - n + 1 : end + 1]] += 1
    return counts


def _discounts(adjusted: Counter) -> tuple[tuple[float, float, float], bool]:
    """D(1), D(2), D(3+) from the counts of adjusted counts (Chen & Goodman); the fallback where they cannot be
    estimated (a count of counts is 0, or a discount leaves its range). Returns (discounts, fell back)."""
    of = Counter(min(count, 5) for count in adjusted.values())
    t = [of[k] for k in range(1, 5)]
    if all(t):
        y = t[0] / (t[0] + 2 * t[1])
        discounts = tuple(k - (k + 1) * y * t[k] / t[k - 1] for k in (1, 2, 3))
        if all(0 <= d <= k for k, d in zip((1, 2, 3), discounts)):
            return discounts, False
    return FALLBACK_DISCOUNTS, True


@dataclass
class ArpaModel:
    """An estimated model: per order {n-gram: (log10 probability, log10 backoff or None)}."""

    orders: list[dict[tuple[str, ...], tuple[float, float | None]]]
    fallback_orders: list[int]  # orders (1-based) whose discounts fell back

    def write(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.write("\\data\\\n")
            for n, grams in enumerate(self.orders, 1):
                out.write(f"ngram {n}={len(grams)}\n")
            for n, grams in enumerate(self.orders, 1):
                out.write(f"\n\\{n}-grams:\n")
                for gram, (prob, backoff) in grams.items():
                    tail = "" if backoff is None else f"\t{backoff:.8g}"
                    out.write(f"{prob:.8g}\t{' '.join(gram)}{tail}\n")
            out.write("\n\\end\\\n")


def estimate(sentences: Iterable[Sequence[str]], order: int) -> ArpaModel:
    """Interpolated modified Kneser–Ney, as lmplz (see the module's docstring)."""
    if order < 2:
        raise ValueError(f"--order {order}: must be at least 2 (KenLM loads bigram models and up)")
    counts = count_ngrams(sentences, order)
    if not counts[0]:
        raise ValueError("no words to build a language model from (the text is empty after normalisation)")
    adjusted = [Counter() for _ in range(order)]
    adjusted[-1] = Counter(counts[-1])
    for n in range(order - 1, 0, -1):  # n-grams of length n, from the distinct (n+1)-grams extending them left
        for gram in counts[n]:
            adjusted[n - 1][gram[1:]] += 1
        for gram, count in counts[n - 1].items():
            if gram[0] == BOS:  # nothing extends <s> to the left: its raw count stands
                adjusted[n - 1][gram] = count
    probabilities: list[dict[tuple[str, ...], float]] = []
    backoffs: list[dict[tuple[str, ...], float]] = []
    fallback = []
    for n in range(1, order + 1):
        grams = adjusted[n - 1]
        discounts, fell_back = _discounts(grams)
        if fell_back:
            fallback.append(n)
        total: dict[tuple[str, ...], float] = defaultdict(float)
        kinds: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
        for gram, count in grams.items():
            total[gram[:-1]] += count
            kinds[gram[:-1]][min(count, 3) - 1] += 1
        backoff = {context: sum(d * k for d, k in zip(discounts, kinds[context])) / total[context] for context in total}
        probability = {}
        for gram, count in grams.items():
            own = (count - discounts[min(count, 3) - 1]) / total[gram[:-1]]
            if n == 1:
                lower = 1 / (len(grams) + 1)  # the uniform distribution over the words, </s> and <unk>
            else:
                lower = probabilities[-1][gram[1:]]
            probability[gram] = own + backoff[gram[:-1]] * lower
        if n == 1:
            probability[(UNK,)] = backoff[()] / (len(grams) + 1)
        probabilities.append(probability)
        backoffs.append(backoff)
    orders = []
    for n in range(1, order + 1):
        table = {}
        if n == 1:
            table[(UNK,)] = (math.log10(probabilities[0][(UNK,)]), 0.0)
            table[(BOS,)] = (0.0, math.log10(backoffs[1][(BOS,)]) if order > 1 and (BOS,) in backoffs[1] else 0.0)
        for gram, prob in probabilities[n - 1].items():
            if gram == (UNK,):
                continue
            if n == order:
                table[gram] = (math.log10(prob), None)
            else:
                weight = backoffs[n].get(gram)
                table[gram] = (math.log10(prob), math.log10(weight) if weight else 0.0)
        orders.append(table)
    return ArpaModel(orders, fallback)


# ------------------------------------------------------------------------------------------------- loading
def load_lm(path: str | Path):
    """A KenLM model from an ARPA (or KenLM binary) file; one clear line when it cannot be."""
    import kenlm  # the `lm` extra: only runs that fuse a language model need it

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such language model file (tools/build_lm.py writes one)")
    config = kenlm.Config()
    config.show_progress, config.arpa_complain = False, kenlm.ARPALoadComplain.NONE
    try:
        return kenlm.Model(str(path), config)
    except (OSError, RuntimeError, ValueError) as error:
        why = " ".join(str(error).split()).split(" threw ")[-1].rstrip(")")  # KenLM's reason, less its C++ frame
        raise ValueError(f"{path}: not a language model KenLM can load (ARPA or KenLM binary): {why}") from None


def read_settings(model_dir: str | Path) -> dict | None:
    """The α and β tools/tune_lm.py wrote beside a model (`lm.json`), or None."""
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        float(settings["alpha"]), float(settings["beta"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a tools/tune_lm.py settings file ({error})") from None
    return settings


def resolve_weights(model_dir, alpha: float | None, beta: float | None) -> tuple[float, float, str]:
    """(α, β, where they came from): given values win, then the model's lm.json, then α 0.5, β 0."""
    saved = read_settings(model_dir) if model_dir is not None and Path(model_dir).is_dir() else None
    if alpha is not None and beta is not None:
        return alpha, beta, "given"
    if saved is not None:
        return (
            float(saved["alpha"]) if alpha is None else alpha,
            float(saved["beta"]) if beta is None else beta,
            str(Path(model_dir) / SETTINGS_FILE),
        )
    return 0.5 if alpha is None else alpha, 0.0 if beta is None else beta, "default"


# -------------------------------------------------------------------------------------------------- fusion
class LMFusion(LogitsProcessor):
    """Shallow fusion of an n-gram LM into generate() (greedy or beam search): per row, the `2 × num_beams`
    best candidates by acoustic score (the others can no longer be chosen, as beam search keeps at most that
    many per step) each get the change in α·LM + β·words that choosing them makes. With α = β = 0 it changes
    no choice: decoding is plain beam search."""

    def __init__(
        self,
        lm,
        tokenizer,
        normalize: Callable[[str], str],
        alpha: float,
        beta: float,
        num_beams: int = 1,
        first_token: int = FIRST_TOKEN,
    ):
        self.lm, self.tokenizer, self.normalize = lm, tokenizer, normalize
        self.alpha, self.beta, self.first_token = alpha, beta, first_token
        self.top_k = 2 * max(1, num_beams)
        self.eos = tokenizer.eos_token_id
        self.start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        self.timestamp_begin = tokenizer.convert_tokens_to_ids("<|0.00|>")
        pieces = tokenizer.convert_ids_to_tokens(list(range(self.eos)))  # text tokens come before <|endoftext|>
        self.starts_word = [piece is not None and piece[:1] in ("Ġ", " ", "Ċ") for piece in pieces]
        self._bonus: dict[tuple[str, bool], float] = {}
        self._texts: dict[tuple[int, ...], str] = {}
        self._states: dict[tuple[str, ...], tuple[float, object]] = {(): (0.0, self._begin())}
        self.words_scored = 0

    def _begin(self):
        import kenlm

        state = kenlm.State()
        self.lm.BeginSentenceWrite(state)
        return state

    def _log10(self, words: tuple[str, ...]) -> tuple[float, object]:
        """LM log10-probability of `<s> words` and its state, extended one word at a time from cached prefixes."""
        import kenlm

        known = len(words)
        while words[:known] not in self._states:
            known -= 1
        score, state = self._states[words[:known]]
        for end in range(known + 1, len(words) + 1):
            out = kenlm.State()
            score += self.lm.BaseScore(state, words[end - 1], out)
            self.words_scored += 1
            state = out
            self._states[words[:end]] = (score, state)
        return score, state

    def bonus(self, text: str, ended: bool) -> float:
        """α · log10 P(normalised words [</s>]) + β · words, for the complete words of a hypothesis."""
        key = (text, ended)
        if key not in self._bonus:
            if len(self._bonus) > CACHE_ENTRIES:  # bounded memory over a long evaluation: start again
                self._bonus.clear()
                self._states = {(): self._states[()]}
            words = tuple(self.normalize(text).split())
            score, state = self._log10(words)
            if ended:
                import kenlm

                score += self.lm.BaseScore(state, EOS, kenlm.State())
            self._bonus[key] = self.alpha * score + self.beta * len(words)
        return self._bonus[key]

    def _decode(self, ids: tuple[int, ...]) -> str:
        if ids not in self._texts:
            if len(self._texts) > CACHE_ENTRIES:
                self._texts.clear()
            self._texts[ids] = self.tokenizer.decode(list(ids))
        return self._texts[ids]

    def _hypothesis_bonus(self, text_ids: tuple[int, ...], last: int) -> float:
        """The bonus of a hypothesis whose text tokens are `text_ids` and whose last token is `last` (-1: none
        yet): after a text token its last word may still go on, so only the words before it count; after the
        end (`</s>` scored too), a timestamp or another special token, all of them."""
        if last < 0 or len(text_ids) < self.first_token:
            return 0.0
        if last >= self.eos:
            return self.bonus(self._decode(text_ids), ended=last == self.eos)
        cut = len(text_ids) - 1
        while cut > 0 and not self.starts_word[text_ids[cut]]:
            cut -= 1
        return self.bonus(self._decode(text_ids[:cut]), ended=False)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        fused = torch.full_like(scores, -math.inf)
        top_scores, top_ids = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1)
        for row, sequence in enumerate(input_ids.tolist()):
            after = len(sequence) - sequence[::-1].index(self.start) if self.start in sequence else 0
            tokens = sequence[after:]  # this window's: the prompt before <|startoftranscript|> is not scored
            text_ids = tuple(token for token in tokens if token < self.eos)
            now = self._hypothesis_bonus(text_ids, tokens[-1] if tokens else -1)
            deltas = [
                self._hypothesis_bonus(text_ids + (token,) if token < self.eos else text_ids, token) - now
                for token in top_ids[row].tolist()
            ]
            fused[row, top_ids[row]] = top_scores[row] + torch.tensor(deltas, dtype=scores.dtype)
        return fused


# -------------------------------------------------------------------------------------------------- tuning
@torch.no_grad()
def decode_all(model, encoded: list, tokenizer, gen_kwargs: dict, fusion: LMFusion | None) -> list[str]:
    """Transcripts of every batch from its encoder output (`encoded`: one hidden-state tensor per batch, computed
    once for the whole grid)."""
    kwargs = {**gen_kwargs, **({"logits_processor": [fusion]} if fusion is not None else {})}
    texts = []
    for hidden in encoded:
        generated = generate_from_encoded(model, hidden, kwargs)
        texts += [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return texts


@torch.no_grad()
def tune_weights(
    model,
    batches: Iterable[dict],
    tokenizer,
    normalize: Callable[[str], str],
    lm,
    gen_kwargs: dict,
    alphas: Sequence[float],
    betas: Sequence[float],
    dtype: torch.dtype = torch.float32,
    on_point: Callable[[dict], None] = lambda point: None,
) -> dict:
    """WER greedy, with plain beam search and at every (α, β) of the grid on `batches` (a validation set), the
    encoder run once per batch. Returns {"greedy", "beam", "grid": [{alpha, beta, wer}], "best": the lowest WER's
    point (ties to the smaller α, then β), "references"}."""
    encoded, references, keys = [], [], []
    for batch in batches:
        features = batch["input_features"].to(model.device, dtype=dtype)
        encoded.append(model.get_encoder()(features).last_hidden_state)
        references += list(batch["texts"])
        keys += list(batch["keys"])

    def wer(texts: list[str]) -> float:
        return score([Prediction(k, r, p) for k, r, p in zip(keys, references, texts, strict=True)], normalize)["wer"]

    result = {
        "samples": len(keys),
        "greedy": wer(decode_all(model, encoded, tokenizer, {**gen_kwargs, "num_beams": 1}, None)),
    }
    result["beam"] = wer(decode_all(model, encoded, tokenizer, gen_kwargs, None))
    on_point({"alpha": 0.0, "beta": 0.0, "wer": result["beam"], "greedy": result["greedy"]})
    result["grid"] = []
    for alpha in alphas:
        for beta in betas:
            fusion = LMFusion(lm, tokenizer, normalize, alpha, beta, gen_kwargs["num_beams"])
            point = {
                "alpha": alpha,
                "beta": beta,
                "wer": wer(decode_all(model, encoded, tokenizer, gen_kwargs, fusion)),
            }
            result["grid"].append(point)
            on_point(point)
    result["best"] = min(result["grid"], key=lambda p: (p["wer"], p["alpha"], p["beta"]))
    return result
