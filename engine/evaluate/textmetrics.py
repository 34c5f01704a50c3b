"""Text metrics of a generated answer against its reference, in percent (0-100).

Exact match compares the stripped strings, as the demo skills always did. Token F1 and
ROUGE-L come from Google's `rouge-score` package: ROUGE-1's F-measure is the token-overlap
F1 (SQuAD's "F1"), ROUGE-L's is the longest-common-subsequence F-measure. Its default
tokenizer keeps only ASCII letters and digits, which would score any other script as empty,
so words and single punctuation marks are split here, in any script, and lower-cased.
"""

from __future__ import annotations

import functools
import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


@functools.cache
def _scorer():
    """ROUGE-1 and ROUGE-L on lower-cased words and punctuation; made on first use, since rouge_score
    imports nltk (0.2 s), which every CLI command would pay otherwise."""
    from rouge_score import rouge_scorer, tokenizers

    class Words(tokenizers.Tokenizer):
        def tokenize(self, text):
            return _TOKEN.findall(text.lower())

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], tokenizer=Words())


def exact_match(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


def scores(answers: list[str], references: list[str]) -> dict[str, float | None]:
    """Mean exact match, token F1 and ROUGE-L over the pairs, in percent; None with no pairs."""
    if not answers:
        return {"exact_match": None, "f1": None, "rougeL": None}
    em = f1 = rl = 0.0
    for answer, reference in zip(answers, references):
        em += exact_match(answer, reference)
        both = _scorer().score(reference, answer)  # (target, prediction)
        f1 += both["rouge1"].fmeasure
        rl += both["rougeL"].fmeasure
    n = len(answers)
    return {"exact_match": round(100 * em / n, 1), "f1": round(100 * f1 / n, 1), "rougeL": round(100 * rl / n, 1)}
