"""Passage links: which passages the best-ranked passage names (`linking`), as the allocation's prior."""

from __future__ import annotations

import math

import pytest

from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage, PassageAllocation, RankWeighting
from finch_rag.linking import named_passages, title_key

CONFIG = FinchConfig(target_tokens=24, chunk_size=64, progress=False)


def test_title_key_drops_case_spaces_and_disambiguation() -> None:
    assert title_key("Democratic  Party (South Africa)") == "democratic party"
    assert title_key("Paris") == "paris" and title_key(None) == "" and title_key("") == ""


def test_the_best_ranked_passage_names_others_by_title_as_whole_words() -> None:
    titles = ["Fox", "Paris (France)", "Sea", "Rivers", "Fox", "Parisian", "A.B.C"]
    texts = ["The fox lives near PARIS and the sea;  Rivers  are wide.", "", "", "", "", "", ""]
    # "Sea" is too short, "Fox" shares the source's title, "Parisian" is not a whole word of the text.
    assert named_passages(titles, texts, sources=1) == [False, True, False, True, False, False, False]
    # Titles are literal text: "A.B.C" as a pattern would match "aXbXc".
    assert named_passages(["Src", "A.B.C"], ["aXbXc and a.b.c", ""], 1) == [False, True]
    assert named_passages(["Src", "A.B.C"], ["aXbXc", ""], 1) == [False, False]
    # With two sources, the second lends its links too, and neither source is named.
    assert named_passages(["One", "Two", "Three"], ["Three", "One", ""], 2) == [False, False, True]
    with pytest.raises(ValueError, match="titles"):
        named_passages(["a"], [], 1)


def _passages() -> list[Passage]:
    return [
        Passage("The secret code is kept by the Bananas guild.", "The code"),
        Passage("Rivers flow to the sea.", "Rivers"),
        Passage("Bananas are yellow fruits.", "Bananas"),
    ]


def test_the_allocation_boosts_named_passages_in_packed_order() -> None:
    plan = PassageAllocation().plan(_passages(), CONFIG)
    assert [p.title for p in plan.packed] == ["Bananas", "Rivers", "The code"]
    assert plan.passage_weights == [4.0, 1.0, 1.0]
    boosted = PassageAllocation(weighting=RankWeighting(link_boost=2.5, tau=1.0)).plan(_passages(), CONFIG)
    assert boosted.passage_weights == pytest.approx([2.5 * math.exp(-2), math.exp(-1), 1.0])  # times the rank factor
    assert PassageAllocation(weighting=RankWeighting(link_boost=1)).plan(_passages(), CONFIG).passage_weights is None
    untitled = [Passage(p.text) for p in _passages()]
    assert PassageAllocation().plan(untitled, CONFIG).passage_weights is None
    assert PassageAllocation().plan([p.text for p in _passages()], CONFIG).passage_weights is None
    assert PassageAllocation("global").plan(_passages(), CONFIG).passage_weights is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"link_boost": 0.5}, "link_boost"),
        ({"link_boost": math.nan}, "link_boost"),
        ({"link_boost": math.inf}, "link_boost"),
        ({"link_boost": True}, "link_boost"),
        ({"link_sources": 0}, "link_sources"),
        ({"link_sources": 2.0}, "link_sources"),
    ],
)
def test_bad_link_options_are_refused(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        RankWeighting(**changes)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_a_named_passage_is_kept_first(tiny_models, tiny_tokenizer, chunk_size) -> None:
    """With a large boost the named passage outranks the rest at every step, whatever the tiny model attends to."""
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer)
    config = FinchConfig(target_tokens=12, chunk_size=chunk_size, progress=False)
    rag = FinchRAG(compressor=compressor, config=config, weighting=RankWeighting(link_boost=1e9), max_new_tokens=1)
    kept = {source.title: source.kept_fraction for source in rag.answer_from("Where is the code?", _passages()).sources}
    if chunk_size is None:
        assert kept["Bananas"] > 0 and kept["Rivers"] == 0 and kept["The code"] == 0
    else:  # read first, it loses entries to the early steps' smaller budgets, then the later chunks fill the rest
        assert kept["Bananas"] > 0
    unlinked = FinchRAG(compressor=compressor, config=config, weighting=RankWeighting(link_boost=1), max_new_tokens=1)
    plain = {
        source.title: source.kept_fraction for source in unlinked.answer_from("Where is the code?", _passages()).sources
    }
    assert plain != kept


BRIDGE_PASSAGES = [  # ranked as a retriever would: the first hop first, the bridge passage last
    Passage(
        "Internal resistance to apartheid in South Africa came from many parts of society. Mass action against "
        "the ruling National Party government was carried by activists such as Steve Biko, Desmond Tutu and "
        "Nelson Mandela.",
        "Internal resistance to apartheid",
    ),
    Passage(
        "The Democratic Party was a South African political party formed in 1989. It opposed the National Party "
        "government and later merged into a larger party.",
        "Democratic Party (South Africa)",
    ),
    Passage(
        "Samuel Sisulu was a South African anti-apartheid activist. He was jailed at several prisons and charged "
        "under the Terrorism Act.",
        "Samuel Sisulu",
    ),
    Passage(
        "The National Union was a short-lived South African political party. It was meant to give a home to "
        "Nationalists who had become unhappy with the government.",
        "National Union (South Africa)",
    ),
    Passage(
        "Letitia Sibeko was a South African anti-apartheid activist. She was a member of the African National "
        "Congress and later joined the Communist Party.",
        "Letitia Sibeko",
    ),
    Passage(
        "Desmond Mpilo Tutu is a South African cleric and theologian. He was the first black Archbishop of Cape "
        "Town and bishop of the Church of the Province of Southern Africa.",
        "Desmond Tutu",
    ),
]


@pytest.mark.slow
def test_links_keep_the_bridge_passage_on_the_embedded_model(real_model) -> None:
    """The question never names Tutu; the first hop does. At B=64 the default keeps the bridge, no links lose it."""
    question = "Which archbishop took part in the mass action against the ruling National Party government?"
    config = FinchConfig(target_tokens=64, progress=False)

    def ask(boost: float) -> tuple[dict[str, float], str]:
        rag = FinchRAG(
            compressor=FinchCompressor(*real_model),
            config=config,
            weighting=RankWeighting(link_boost=boost),
            max_new_tokens=12,
        )
        answer = rag.answer_from(question, BRIDGE_PASSAGES)
        return {source.title: source.kept_fraction for source in answer.sources}, answer.text

    kept, text = ask(RankWeighting().link_boost)
    assert kept["Desmond Tutu"] > 0.9 and kept["Internal resistance to apartheid"] > 0.3 and "Tutu" in text
    unlinked, _ = ask(1.0)
    assert unlinked["Desmond Tutu"] < 0.5
