"""The benchmark harness: budgets, methods, equal-budget bookkeeping, and a smoke run on the real model."""

from __future__ import annotations

import json

import pytest
import torch

from finch_rag import FinchCompressor, FinchConfig, Passage
from finch_rag.bench.methods import BUILTIN_METHODS, Method, expand_methods, parse_method
from finch_rag.bench.qa import Example, _sample, _truncated, budget_of, run_example
from finch_rag.prompts import build_prompt

PASSAGES = [
    Passage("The harbour of Velm freezes every winter and ships wait for the thaw.", "Velm"),
    Passage("Orla Brant designed the lighthouse on the northern cape in 1881.", "Lighthouse"),
    Passage("Goats graze on the terraces above the village during the summer.", "Goats"),
]
QUESTION = "Who designed the lighthouse?"
EVIDENCE = [(1, 0, PASSAGES[1].text.index(" designed"))]  # "Orla Brant" in the rank-2 passage


@pytest.fixture(scope="module")
def compressor(tiny_models, tiny_tokenizer):
    return FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(chunk_size=24, progress=False))


@pytest.fixture(scope="module")
def example():
    return Example("unit", "q1", QUESTION, PASSAGES, ["Orla Brant"], EVIDENCE)


def test_budget_labels():
    assert budget_of("4x", 100) == 25
    assert budget_of("32x", 20) == 1, "never an empty budget"
    assert budget_of("256", 100) == 100, "never more than the context"
    assert budget_of("64", 100) == 64
    for bad in ("0x", "0.5x", "-3", "abc", "4y"):
        with pytest.raises(ValueError, match="compression factor"):
            budget_of(bad, 100)


def test_question_samples_are_prefix_stable():
    """`--limit 94` draws the first 94 questions of a `--limit 200` run, so a stopped run's figures reproduce."""
    items = list(range(600))
    assert _sample(items, 200, seed=0)[:94] == _sample(items, 94, seed=0)
    assert _sample(items, 94, seed=0) != _sample(items, 94, seed=1)


def test_methods_by_name_group_and_spec():
    assert BUILTIN_METHODS["finch"].packing == "best_last" and BUILTIN_METHODS["finch_global"].packing == "rank"
    names = [m.name for m in expand_methods(["allocation", "finch", "random"])]
    expected = ["full", "truncation", "finch_global", "finch", "finch_rag", "random"]
    assert names == expected, "groups expand once, in order"
    assert BUILTIN_METHODS["finch_rag"].options == {"granularity": "sentence"}
    spec = parse_method("s1:smoothing=1,score_layers=upper,chunk_size=none,packing=rank")
    assert spec == Method("s1", "finch", {"smoothing": 1, "score_layers": "upper_half", "chunk_size": None}, "rank")
    with pytest.raises(ValueError, match="Unknown method"):
        parse_method("finchh")
    with pytest.raises(ValueError, match="not key=value"):
        parse_method("x:smoothing")
    with pytest.raises(ValueError, match="packing"):
        parse_method("x:packing=middle")


def test_truncation_keeps_passages_in_rank_order_up_to_the_budget(tiny_tokenizer):
    parts = build_prompt(tiny_tokenizer, PASSAGES, QUESTION)
    n = len(parts.context_ids)
    first_text_token = next(
        i for i, (start, _) in enumerate(parts.token_offsets) if start >= parts.passage_text_spans[0][0]
    )
    for budget in (first_text_token + 2, parts.passage_token_starts[1] + 2, n - 1):
        kept = _truncated(parts, PASSAGES, budget)
        assert [p.title for p in kept] == [p.title for p in PASSAGES[: len(kept)]]
        assert all(a.text == b.text for a, b in zip(kept[:-1], PASSAGES, strict=False)), "only the last one is cut"
        cut = build_prompt(tiny_tokenizer, kept, QUESTION)
        # at most the budget (one token of slack for re-tokenising the cut), less at most a title and separator
        assert budget - 8 <= len(cut.context_ids) <= budget + 1


def test_every_method_at_equal_budget(compressor, example):
    methods = expand_methods(["all", "finchpress"])
    records = run_example(compressor, example, methods, ["4x", "12"], max_new_tokens=3)
    assert {(r["method"], r["budget"]) for r in records} == {
        ("full", "full"),
        *((m.name, label) for m in methods if m.kind != "full" for label in ("4x", "12")),
    }
    n = records[0]["context_tokens"]
    for record in records:
        assert 0 <= record["retention"] <= 1 and record["all_hops"] in (0.0, 1.0)
        assert {"contains", "em", "f1", "answer", "compress_s", "generate_s"} <= set(record)
        if record["method"] == "full":
            assert record["retention"] == 1.0 and record["B"] == n
        elif record["method"] == "truncation":
            assert record["kept_tokens"] <= n
        else:
            assert record["B"] == (n // 4 if record["budget"] == "4x" else 12)
            assert record["kept_tokens"] == record["B"], f"{record['method']} keeps exactly B entries"
            assert len(record["retention_per_layer"]) == compressor.model.config.num_hidden_layers


def test_retention_is_counted_on_each_methods_own_packing(compressor, example):
    """Best-last packing moves the evidence's passage; retention must follow it (compare with a direct run)."""
    parts = build_prompt(compressor.tokenizer, PASSAGES, QUESTION)
    budget = len(parts.context_ids) // 3
    (record,) = run_example(compressor, example, [BUILTIN_METHODS["finch"]], [str(budget)], answer=False)
    direct = compressor.compress(PASSAGES[::-1], QUESTION, config=compressor.config.replace(target_tokens=budget))
    assert record["retention"] == pytest.approx(direct.kept_fraction([(1, *EVIDENCE[0][1:])]))
    (first,) = run_example(compressor, example, [BUILTIN_METHODS["first"]], [str(budget)], answer=False)
    evidence = parts.span_tokens(EVIDENCE)
    assert first["retention"] == pytest.approx(float((torch.arange(len(evidence)) < budget)[evidence].float().mean()))


@pytest.mark.slow
def test_smoke_run_writes_results_for_every_suite(tmp_path):
    """`make test`'s one-minute smoke of `finch-rag bench quick` on the real model and data."""
    from finch_rag.bench.common import data_dir
    from finch_rag.cli import main

    try:
        data_dir()
    except FileNotFoundError:
        pytest.skip("no benchmark data folder (../shared/data)")
    assert main(["bench", "quick", "--smoke", "--out", str(tmp_path)]) == 0
    for suite in ("squad", "hotpotqa", "niah"):
        payload = json.loads((tmp_path / f"{suite}.json").read_text())
        assert payload["records"] and "machine" in payload["meta"]
        assert (tmp_path / f"{suite}.md").read_text().startswith("# ")
    squad = json.loads((tmp_path / "squad.json").read_text())["records"]
    assert {r["method"] for r in squad} == {"full", "truncation", "finch", "first"}
    assert next(r for r in squad if r["method"] == "full")["retention"] == 1.0
    assert all(0 <= r["f1"] <= 1 for r in squad)
    assert (tmp_path / "squad.png").stat().st_size > 10_000
    hotpotqa = json.loads((tmp_path / "hotpotqa.json").read_text())["records"]
    assert {r["method"] for r in hotpotqa} == {"truncation", "finch_rag"}
    assert all(r["kept_tokens"] == r["B"] for r in hotpotqa), "equal budget"


@pytest.mark.parametrize("spec", ["global:sel=shared", "sentences:span=1,L=upper,order=rev", "ph:sel=per_head,s=3"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_allocation_study_simulates_what_a_single_pass_keeps(tiny_models, tiny_tokenizer, spec, arch):
    """The design study's one-capture selection (``--mode sim``) is what `compress` keeps with one chunk.

    (The study runs on the embedded Llama-architecture model; its layer sets ignore sliding-window layers.)
    """
    from finch_rag.bench.allocation import Design, capture_scores, kept_mask, pack

    example = Example("hotpotqa", "q", QUESTION, PASSAGES, ["Orla Brant"], EVIDENCE)
    design = Design.parse(spec)
    config = FinchConfig(chunk_size=None, progress=False)
    compressor = FinchCompressor(tiny_models(arch), tiny_tokenizer, config)
    packed = pack(example, design.order, tiny_tokenizer, config)
    packed.layer_scores = capture_scores(compressor, packed, config)
    simulated = kept_mask(design, packed, budget=16)
    real = compressor.compress(
        packed.passages,
        QUESTION,
        config=config.replace(
            target_tokens=16,
            selection=design.sel,
            smoothing=design.s,
            granularity="sentence" if design.span else "token",
            score_layers="all" if design.L == "all" else "upper_half",
        ),
    )
    torch.testing.assert_close(simulated, real.kept_mask())
