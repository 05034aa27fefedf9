"""The benchmark harness: budgets, methods, equal-budget bookkeeping, and a smoke run on the real model."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from benchmarks.datasets import Example, sample
from benchmarks.methods import BUILTIN_METHODS, Method, allocation_of, expand_methods, parse_method
from benchmarks.qa import _truncated, budget_of, run_example, untitled
from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage, PassageAllocation
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


def test_untitled_examples_keep_their_evidence(tiny_tokenizer, example):
    """``--untitled`` drops the titles from the prompt; the evidence still marks "Orla Brant"."""
    bare = untitled(example)
    assert [p.title for p in bare.passages] == [None] * 3
    assert [p.text for p in bare.passages] == [p.text for p in PASSAGES]
    for case in (example, bare):
        parts = build_prompt(tiny_tokenizer, case.passages, QUESTION)
        evidence = torch.as_tensor(parts.context_ids)[parts.span_tokens(case.evidence)]
        assert tiny_tokenizer.decode(evidence).strip() == "Orla Brant"
    assert "Lighthouse" not in tiny_tokenizer.decode(build_prompt(tiny_tokenizer, bare.passages, QUESTION).context_ids)


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
    assert sample(items, 200, seed=0)[:94] == sample(items, 94, seed=0)
    assert sample(items, 94, seed=0) != sample(items, 94, seed=1)


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
    no_links = parse_method("no_links:granularity=sentence,link_boost=1")
    assert no_links.weighting == {"link_boost": 1} and no_links.options == {"granularity": "sentence"}
    config = FinchConfig(granularity="sentence")
    assert allocation_of(no_links, config).weighting.link_boost == 1
    assert allocation_of(BUILTIN_METHODS["finch_rag"], config) == PassageAllocation()
    with pytest.raises(ValueError, match="RankWeighting field"):
        parse_method("x:link_boots=1")


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


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_controls_keep_what_their_rule_says(compressor, chunk_size):
    """The presets run the library's control policies in the real loop: the last B, the first B, a seeded random B."""
    from benchmarks.methods import PRESETS, method_config

    budget = 9
    kept = {}
    for rule in ("recency", "first", "random"):
        config = method_config(compressor.config, PRESETS[rule], 2, target_tokens=budget).replace(chunk_size=chunk_size)
        assert config.selection == rule
        compressed = compressor.compress(PASSAGES, QUESTION, config=config)
        kept[rule] = compressed.kept_positions[0][0].cpu()
        assert all(torch.equal(layer.cpu(), kept[rule].expand_as(layer)) for layer in compressed.kept_positions)
    n = compressed.original_tokens
    assert torch.equal(kept["recency"], torch.arange(n - budget, n))
    assert torch.equal(kept["first"], torch.arange(budget))
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:budget].sort().values
    assert torch.equal(kept["random"], expected), "the same set as the harness's former control_context (seed 0)"


@pytest.mark.slow
def test_smoke_run_writes_results_for_every_suite(tmp_path):
    """`make test`'s one-minute smoke of `python -m benchmarks quick` on the real model and data."""
    from benchmarks.__main__ import main
    from benchmarks.common import data_dir

    try:
        data_dir()
    except FileNotFoundError:
        pytest.skip("no benchmark data folder (../shared/data)")
    assert main(["quick", "--smoke", "--out", str(tmp_path)]) == 0
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


@pytest.mark.parametrize("suite", ["squad", "rag-squad", "hotpotqa", "niah", "cost", "batch", "quick"])
def test_every_suite_runs_from_python_dash_m(suite, capsys):
    """``python -m benchmarks SUITE --help``: each suite has its own options, --out and --data among them."""
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main([suite, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "--data" in out and f"python -m benchmarks {suite}" in out


def test_help_lists_every_suite(capsys):
    from benchmarks import SUITES
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUITES) and len(SUITES) == 11
    with pytest.raises(SystemExit) as exit_info:
        main(["bogus"])
    assert exit_info.value.code == 2


def test_paths_default_to_the_working_directory(tmp_path, monkeypatch):
    """Data in ``../shared/data`` and results in ``docs/results``, both from where the command runs."""
    from benchmarks import suite_parser
    from benchmarks.common import DATA_ENV, data_dir

    for name in ("squad", "niah", "cost", "batch"):
        assert suite_parser(name).parse_args([]).out == "docs/results"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert data_dir() == tmp_path / "shared" / "data"
    assert data_dir("../shared") == tmp_path / "shared"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--data"):
        data_dir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data_dir(tmp_path / "nowhere")


def test_methods_are_named_by_finch_config_fields():
    """Every preset is FinchConfig changes; a spec key that is not a field is an error naming the fields."""
    from benchmarks.methods import CONTROLS, PRESETS, method_config

    base = FinchConfig()
    for method in PRESETS.values():
        if method.kind == "finch" and method.control is None:
            config = method_config(base, method, num_layers=4, target_tokens=8)
            for key, value in method.options.items():
                assert getattr(config, key) == getattr(FinchConfig(**{key: value}), key), (method.name, key)
    assert {name: PRESETS[name].options for name in CONTROLS} == {name: {"selection": name} for name in CONTROLS}
    assert parse_method("ph:selection=per_head,chunk_size=None,granularity=sentence").options == {
        "selection": "per_head",
        "chunk_size": None,
        "granularity": "sentence",
    }
    assert parse_method("r:selection=recency").control == "recency"
    with pytest.raises(ValueError, match="FinchConfig field"):
        parse_method("old:sel=shared,s=9")


def test_quick_plans_parse_and_cover_every_suite():
    """`make bench-quick` runs every other suite; each planned command line parses with that suite's parser."""
    from benchmarks import SUITES, suite_parser
    from benchmarks.quick import QUICK, SMOKE, suite_argv
    from benchmarks.reliability import COMMANDS

    # peers needs kvpress's own environment, reread the full-context answers peers journals, and ruler only writes
    # its inputs, so none of them is in the quick run.
    skipped = ("quick", "ruler", "peers", "reread")
    assert [suite for suite, _ in QUICK] == [name for name in SUITES if name not in skipped]
    for plan, smoke in ((QUICK, False), (SMOKE, True)):
        for suite, options in plan:
            # Exactly what `quick` runs, with every shared flag given (--data, --model), through the real parser.
            args = suite_parser(suite).parse_args(suite_argv(suite, options, Path("x"), "d", "m", smoke))
            if suite == "reliability":  # its parser hands the options to the command's own parser
                command = importlib.import_module(f"benchmarks.reliability.{COMMANDS[args.command]}")
                command.build_parser().parse_args(args.options)
            if suite == "cost":
                assert max(args.lengths) <= 1024, "the quick cost run stays at short contexts"


BENCH_COMMAND = re.compile(r"^\s*(?:\$ )?(?:\S*python\S* )?-m benchmarks (.+)$")


def _documented_commands() -> list[tuple[str, list[str]]]:
    """``python -m benchmarks ...`` lines of the ```bash blocks in README.md, docs/*.md and docs/results/README.md."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "docs" / "results" / "README.md"]:
        in_bash = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip().startswith("```"):
                in_bash = not in_bash and line.strip()[3:].strip() in ("bash", "sh", "shell", "console")
                continue
            match = BENCH_COMMAND.match(line) if in_bash else None
            if match:
                found.append((f"{path.name}:{number}", shlex.split(match[1], comments=True)))
    return found


def test_documented_benchmark_commands_parse():
    from benchmarks import SUITES, suite_parser

    commands = _documented_commands()
    assert len(commands) >= 5, commands
    for where, (suite, *options) in commands:
        assert suite in SUITES, f"{where}: unknown suite {suite!r}"
        try:
            suite_parser(suite).parse_args(options)
        except SystemExit as error:
            pytest.fail(f"{where}: `python -m benchmarks {suite} {' '.join(options)}` does not parse ({error})")


def test_the_wheel_holds_the_library_only():
    """The packages setuptools puts in the wheel (pyproject's find rule) are finch_rag's and no benchmark code."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from setuptools import find_packages

    root = Path(__file__).resolve().parents[2]
    rule = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(root), include=rule.get("include", ["*"]), exclude=rule.get("exclude", ()))
    assert "finch_rag" in packages and "finch_rag.compression" in packages
    assert "benchmarks" in find_packages(where=str(root)), "the harness is a package beside the library"
    assert all(name == "finch_rag" or name.startswith("finch_rag.") for name in packages), packages
    assert not any("bench" in name for name in packages), packages


@pytest.mark.slow
def test_built_wheel_has_no_benchmark_code(tmp_path):
    """Build the wheel (no network: the installed setuptools) from a copy of the sources and list it."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("finch_rag", "benchmarks"):
        shutil.copytree(root / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("finch_rag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "finch_rag/compressor.py" in names and "finch_rag/py.typed" in names
    assert not [name for name in names if "bench" in name], "benchmark code in the wheel"


def test_a_smaller_retrieval_counts_the_evidence_it_cut_off_as_lost(compressor, example):
    """top_k_of(1) drops the evidence's rank-2 passage: nothing can keep it, so retention and all-hops are 0."""
    from benchmarks.retrieve_more import top_k_of

    cut = top_k_of(example, 1)
    assert cut.passages == PASSAGES[:1] and cut.evidence == [] and cut.unretrieved_evidence == ["Orla Brant"]
    assert cut.info["top_k"] == 1
    for record in run_example(compressor, cut, expand_methods(["truncation", "finch_rag"]), ["4x"], answer=False):
        assert record["retention"] == 0.0 and record["all_hops"] == 0.0
    (whole,) = run_example(compressor, top_k_of(example, 3), [BUILTIN_METHODS["full"]], ["4x"], answer=False)
    assert whole["retention"] == 1.0 and whole["all_hops"] == 1.0


def test_unretrieved_evidence_dilutes_retention_and_fails_all_hops():
    from benchmarks.stats import evidence_metrics

    kept = torch.tensor([1.0, 1.0, 0.0, 0.0])
    masks = [torch.tensor([True, True, False, False])]
    assert evidence_metrics(kept, None, masks) == {"retention": 1.0, "all_hops": 1.0}
    assert evidence_metrics(kept, None, masks, unretrieved_tokens=2) == {"retention": 0.5, "all_hops": 0.0}


def test_retrieve_more_report_and_plot_from_records(tmp_path):
    from benchmarks.retrieve_more import plot, report

    records = [
        {"qid": q, "top_k": k, "method": m, "budget": "128", "context_tokens": 100 * k, "compress_s": 0.1,
         "retention": 0.1 * k + (0.2 if m == "finch_rag" else 0), "all_hops": float(m == "finch_rag")}
        for q in ("a", "b") for k in (2, 4) for m in ("truncation", "finch_rag")
    ]  # fmt: skip
    text = report(records, {"suite": "hotpotqa", "command": "python -m benchmarks.retrieve_more hotpotqa"})
    assert "## B = 128" in text and "k=4 B=128" in text and "finch_rag minus truncation" in text
    assert plot(records, tmp_path / "curve.png", "t").stat().st_size > 0


def test_the_curves_one_pass_selection_equals_compressing_at_each_budget(compressor, example):
    """Selecting from one recorded pass gives, at each B, what run_example's single-pass finch_rag keeps."""
    from benchmarks.retrieve_more import _curve_records

    config = FinchConfig(chunk_size=None, progress=False)
    n = len(build_prompt(compressor.tokenizer, PASSAGES, QUESTION).context_ids)
    budgets = [n // 4, n // 2, n + 5]
    curve = _curve_records(compressor.model, compressor.tokenizer, example, budgets, config)
    method = expand_methods(["single:granularity=sentence,chunk_size=None,packing=best_last"])
    direct = run_example(compressor, example, method, [str(b) for b in budgets], answer=False)
    for budget, record in zip(budgets, direct, strict=True):
        (ours,) = [r for r in curve if r["method"] == "finch_rag" and r["budget"] == str(budget)]
        assert ours["retention"] == pytest.approx(record["retention"]) and ours["all_hops"] == record["all_hops"]
    (truncated,) = [r for r in curve if r["method"] == "truncation" and r["budget"] == str(n + 5)]
    assert truncated["retention"] == 1.0


def test_fusion_sentence_texts_and_priors(tiny_tokenizer):
    from benchmarks.fusion import sentence_texts, with_prior
    from finch_rag.compression.selection import CandidateScores

    parts = build_prompt(tiny_tokenizer, PASSAGES, QUESTION)
    ids = parts.sentence_ids()
    texts = sentence_texts(parts, ids)
    assert len(texts) == int(ids.max()) + 1 and any("Orla Brant designed" in text for text in texts)
    positions = [torch.tensor([[[0, 2, 3]]])]
    candidates = CandidateScores([], positions, weights=[torch.tensor([[[1.0, 2.0, 0.5]]])])
    prior = torch.tensor([10.0, 20.0, 30.0, 40.0])
    assert with_prior(candidates, prior).weights[0].tolist() == [[[10.0, 60.0, 20.0]]]
    assert with_prior(CandidateScores([], positions), prior).weights[0].tolist() == [[[10.0, 30.0, 40.0]]]


def test_paired_comparison_reports_differences_wins_and_the_all_hops_ratio():
    from benchmarks.stats import paired_comparison

    ours, theirs = [1, 1, 0, 1], [1, 0, 0, 0]
    records = [
        {"qid": str(q), "method": method, "budget": "128", "all_hops": hops, "retention": hops / 2}
        for method, values in (("finch_rag", ours), ("truncation", theirs))
        for q, hops in enumerate(values)
    ]
    table = "\n".join(paired_comparison(records, ["128"], "finch_rag", "truncation"))
    row = next(line for line in table.splitlines() if line.startswith("| 128"))
    assert "+0.500 [" in row and "+0.250 [" in row, "all_hops and retention differences"
    assert "| 2 / 0 |" in row and "3.00x [" in row
    for record in records:
        record["all_hops"] = 0
    assert "| - |" in "\n".join(paired_comparison(records, ["128"], "finch_rag", "truncation")), "no ratio over 0"


def test_truncation_without_answers_needs_no_prefill_and_keeps_the_same(compressor, example):
    method = [BUILTIN_METHODS["truncation"]]
    (quick,) = run_example(compressor, example, method, ["8"], answer=False)
    (answered,) = run_example(compressor, example, method, ["8"], answer=True, max_new_tokens=1)
    assert quick["compress_s"] == 0.0 and quick["kept_tokens"] == 8
    assert quick["retention"] == answered["retention"] and quick["all_hops"] == answered["all_hops"]


def test_requery_mixes_two_passes_and_reads_the_lead_sentences(compressor):
    from benchmarks.requery import lead_sentences, mixed
    from benchmarks.single_pass import record_pass
    from finch_rag.compression.selection import CandidateScores

    positions = [torch.tensor([[0, 1, 2]])]
    first = CandidateScores([torch.tensor([[[[1.0, 0.0, 0.0]]]])], positions)
    second = CandidateScores([torch.tensor([[[[0.0, 0.0, 1.0]]]])], positions)
    assert mixed(first, second, 0.25).layer_scores[0].flatten().tolist() == [0.75, 0.0, 0.25]
    with pytest.raises(ValueError, match="different candidates"):
        mixed(first, CandidateScores(second.layer_scores, [torch.tensor([[0, 1, 3]])]), 0.5)
    recorded = record_pass(compressor.model, compressor.tokenizer, PASSAGES, QUESTION, FinchConfig(progress=False))
    lead = lead_sentences(recorded, 4)
    rendered = [f"{passage.title}\n{passage.text}" for passage in PASSAGES]  # a first sentence carries the title
    assert lead and all(any(text in passage for passage in rendered) for text in lead)
    everything = lead_sentences(recorded, recorded.context_length)
    assert len(everything) == 3 and set(lead) <= set(everything), "one sentence per passage here"


def test_retrieval_head_probe_and_vote(compressor):
    import random

    from benchmarks.heads import HeadVote, probe_example, probe_heads, top_heads
    from finch_rag.compression.selection import CandidateScores

    haystack, question, answer = probe_example(random.Random(0), sentences=3)
    assert f" is {answer}." in haystack and answer not in question
    lift = probe_heads(compressor.model, compressor.tokenizer, probes=1)
    text_config = compressor.model.config
    assert lift.shape == (text_config.num_hidden_layers, text_config.num_attention_heads) and bool((lift >= 0).all())
    assert top_heads(torch.tensor([[0.0, 3.0], [2.0, 1.0]]), 2) == ((0, 1), (1, 0))
    scores = [torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]]])]  # one layer, 2 KV heads of 1 query head each
    candidates = CandidateScores(scores, [torch.tensor([[[0, 1]]]).expand(1, 2, 2)])
    assert HeadVote(heads=((0, 1),)).shared(candidates).tolist() == [[0.5, 0.5]]
    assert HeadVote(heads=((0, 0), (0, 1))).shared(candidates).tolist() == [[0.375, 0.625]]


def test_spreading_with_no_decay_keeps_the_defaults_sentences(compressor):
    from benchmarks.diversity import spread_kept
    from benchmarks.single_pass import record_pass

    recorded = record_pass(compressor.model, compressor.tokenizer, PASSAGES, QUESTION, FinchConfig(progress=False))
    sentence_ids = recorded.parts.sentence_ids()

    def whole_sentences(kept: torch.Tensor) -> set[int]:
        return {s for s in set(sentence_ids.tolist()) if bool(kept[sentence_ids == s].all())}

    for budget in (5, 12, recorded.context_length):
        spread = spread_kept(recorded, budget, 1.0)
        assert int(spread.sum()) == min(budget, recorded.context_length)
        assert whole_sentences(spread) == whole_sentences(recorded.kept(budget))

    # Two sentences a passage: with decay 0 the first three sentences kept whole come from three passages.
    passages = [Passage(f"{p.text} The weather there was mild that year.", p.title) for p in PASSAGES]
    recorded = record_pass(compressor.model, compressor.tokenizer, passages, QUESTION, FinchConfig(progress=False))
    sentence_ids = recorded.parts.sentence_ids()
    starts = torch.tensor(recorded.parts.passage_token_starts)
    passage_of = torch.bucketize(torch.arange(recorded.context_length), starts, right=True) - 1
    order: list[int] = []
    for budget in range(1, recorded.context_length + 1):
        order += sorted(whole_sentences(spread_kept(recorded, budget, 0.0)) - set(order))
    first_passages = [int(passage_of[sentence_ids == s][0]) for s in order[:3]]
    assert len(order) == 6 and sorted(first_passages) == [0, 1, 2]


def test_the_links_screen_replays_the_default_with_and_without_links(compressor):
    from benchmarks.links import with_boost
    from benchmarks.screen import ScreenQuestion
    from benchmarks.single_pass import Truncation, record_pass

    passages = [Passage("The secret code is kept by the Bananas guild.", "The code"), *PASSAGES[1:]]
    passages.append(Passage("Bananas are yellow fruits.", "Bananas"))
    recorded = record_pass(compressor.model, compressor.tokenizer, passages, QUESTION, FinchConfig(progress=False))
    assert recorded.plan.passage_weights is not None  # the best passage names "Bananas"
    example = Example("hotpotqa", "q", QUESTION, passages, ["4817"], [(0, 0, 10)])
    question = ScreenQuestion(example, recorded, [], Truncation.of(compressor.tokenizer, passages, QUESTION, []))
    bananas_end = recorded.parts.passage_token_starts[1]  # "Bananas" is ranked last, so packed first
    for budget in (4, 8):
        assert torch.equal(with_boost(question, 4.0)(budget), recorded.kept(budget))  # the default is boost 4
    boosted, plain = with_boost(question, 1e9)(8), with_boost(question, 1.0)(8)
    assert int(boosted[:bananas_end].sum()) == 8 and not torch.equal(boosted, plain)


def test_a_fused_recorded_pass_keeps_what_finchrag_keeps_in_one_pass(compressor):
    """``fuse=True`` records the library's default on pieces of one document: sentence fusion included."""
    from benchmarks.single_pass import record_pass

    pieces = [Passage(passage.text, "One article") for passage in PASSAGES]  # one title: pieces of one document
    config = FinchConfig(chunk_size=None, progress=False)
    fused = record_pass(compressor.model, compressor.tokenizer, pieces, QUESTION, config, fuse=True)
    plain = record_pass(compressor.model, compressor.tokenizer, pieces, QUESTION, config)
    assert fused.prior is not None and plain.prior is None
    for budget in (6, 12):
        rag = FinchRAG(compressor=compressor, config=config.replace(target_tokens=budget), max_new_tokens=1)
        compressed = rag.answer_from(QUESTION, pieces).compressed
        assert compressed is not None
        kept = torch.zeros(fused.context_length)
        kept[compressed.kept_positions[0][0]] = 1.0  # layer 0, KV head 0: shared selection keeps one set
        assert torch.equal(fused.kept(budget), kept)
    assert any(not torch.equal(fused.kept(budget), plain.kept(budget)) for budget in (6, 12))
    assert torch.equal(fused.reweighted(None).weights[0], fused.prior[fused.candidates.positions[0]])


def test_compare_pairs_one_methods_records_across_two_files(tmp_path, capsys):
    from benchmarks.compare import main as compare

    def records(all_hops: list[float]) -> dict:
        rows = [{"qid": f"q{i}", "method": "finch_rag", "budget": "128", "all_hops": v} for i, v in enumerate(all_hops)]
        return {"records": [*rows, {"qid": "q0", "method": "truncation", "budget": "128", "all_hops": 1.0}]}

    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps(records([0.0, 0.0, 1.0, 1.0])))
    after.write_text(json.dumps(records([1.0, 1.0, 1.0])))  # q3 is missing: only questions in both are paired
    assert compare([str(before), str(after), "--labels", "old", "new", "--out", str(tmp_path / "paired")]) == 0
    report = (tmp_path / "paired.md").read_text()
    assert "- questions in both: 3" in report and "## Paired: new minus old" in report
    assert "| 128 | 3 | +0.667 [" in report and "| 2 / 0 | 3.00x [" in report
    with pytest.raises(SystemExit):
        compare([str(before), str(after), "--method", "nothing"])


def test_compare_pairs_two_methods_of_one_run(tmp_path):
    from benchmarks.compare import main as compare

    rows = [{"qid": f"q{i}", "method": "finch_rag", "budget": "128", "all_hops": 0.0} for i in range(3)]
    rows += [{"qid": f"q{i}", "method": "fused", "budget": "128", "all_hops": float(i < 2)} for i in range(3)]
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"records": rows}))
    arguments = [str(run), str(run), "--after-method", "fused", "--labels", "default", "fused", "--out"]
    assert compare([*arguments, str(tmp_path / "paired")]) == 0
    report = (tmp_path / "paired.md").read_text()
    assert report.startswith("# fused against finch_rag: fused against default")
    assert "- questions in both: 3" in report and "| 128 | 3 | +0.667 [" in report


def test_compare_pairs_two_peers_journals_by_case_and_ratio_with_ruler_s_score(tmp_path):
    from benchmarks.compare import main as compare

    def journal(path, answers: list[str | None]) -> str:
        rows = [
            {
                "case": f"niah_single_1/{i}",
                "task": "niah_single_1",
                "ratio": 0.875,
                "metric": "all",
                "method": "finch_rag",
                "answers": ["4341323"],
                "answer": answer,
                "retention": 0.5,
            }
            for i, answer in enumerate(answers)
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)

    # The undecoded answer (None) is left out of the pairing, as the peers report leaves it out.
    chunks = journal(tmp_path / "chunks.jsonl", ["no", "no", "it is 4341323", None])
    one_pass = journal(tmp_path / "one.jsonl", ["4341323", "4341323", "4341323", "4341323"])
    assert compare([chunks, one_pass, "--labels", "chunks", "one pass", "--out", str(tmp_path / "paired")]) == 0
    report = (tmp_path / "paired.md").read_text()
    assert "- questions in both: 3" in report and "## Paired: one pass minus chunks" in report
    assert "| budget | questions | retention | score |" in report and "| 0.875 | 3 | +0.000 [" in report
    assert "+0.667 [" in report


def test_serve_summary_counts_the_answers_both_servers_gave_alike() -> None:
    from benchmarks.serve import identical_answers, summary

    before = {"setup": "s", "code": "before (x)", "clients": 16, "requests_per_s": 1.0, "answers": {"0": "a", "1": "b"}}
    after = {"setup": "s", "code": "after (y)", "clients": 16, "requests_per_s": 2.5, "answers": {"0": "a", "1": "c"}}
    assert identical_answers(before, after) == "1 of 2 identical"
    assert identical_answers(before, {**after, "answers": {"0": "a"}}) == "1 of 1 identical"  # errors answer nothing
    assert "- s, 16 clients: 2.50x (1 of 2 identical)" in summary([before, after])


def test_cost_alternate_measures_the_documents_front_end_beside_the_core(tiny_model_dir, tmp_path):
    """``cost --alternate --documents`` times `FinchRAG.answer_from_documents` beside the core and full prefill.

    That row is the front end's path: pieces ranked, sentence fusion, the same context as the other rows.
    """
    from benchmarks.common import data_dir
    from benchmarks.cost import main

    try:
        data_dir()
    except FileNotFoundError:
        pytest.skip("no benchmark data folder (../shared/data)")
    # The tiny tokenizer spells out characters: 256 tokens fit its 512 positions in full, 2,400 are cut in pieces.
    argv = ["--alternate", "--documents", "--model", str(tiny_model_dir), "--lengths", "256", "2400"]
    argv += ["--repeats", "1", "--new-tokens", "3", "--threads", "1", "--target-tokens", "64", "--chunk-size", "128"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    short, long = json.loads((tmp_path / "cost_alternate.json").read_text())["records"]
    assert {"finch S=128", "documents", "full", "static"} <= short.keys() and "full" not in long
    assert long["documents"]["passages"] > 1 and long["documents"]["context_tokens"] > 64
    assert all(record["documents"]["total_s"] > 0 for record in (short, long))
    assert long["documents"]["fusion_s"] > 0 and long["documents"]["ranking_s"] > 0
    assert "FinchRAG.answer_from_documents" in (tmp_path / "cost_alternate.md").read_text()


def test_cost_alternate_rows_name_each_chunk_size_and_with_compressed_too_its_compressed_cache():
    from benchmarks.cost import _finch_rows, build_parser

    plain = build_parser().parse_args(["--alternate", "--chunk-size", "auto", "512"])
    assert _finch_rows(plain) == {
        "finch S=auto": ({"chunk_size": "auto"}, False),
        "finch S=512": ({"chunk_size": 512}, False),
    }
    both = build_parser().parse_args(["--alternate", "--chunk-size", "auto", "--compressed-too", "--held-prefix"])
    assert _finch_rows(both) == {
        "finch S=auto": ({"chunk_size": "auto"}, False),
        "finch S=auto, compressed cache": ({"chunk_size": "auto", "answer_cache": "compressed"}, False),
        "finch S=auto, held prefix": ({"chunk_size": "auto"}, True),
    }
    for options, _ in _finch_rows(both).values():
        FinchConfig(target_tokens=64, **options)  # every row is a valid config
