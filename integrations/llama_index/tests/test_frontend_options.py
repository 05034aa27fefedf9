"""The options every llama-index-finch class shares (`finch_rag.frontends`), on the repository's tiny random model.

Fast: a 2-layer model and a 120-token tokenizer built in memory (``tests/conftest.py`` of finch-rag), no download.
"""

from __future__ import annotations

import pytest
from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage, RankWeighting
from finch_rag.prompts import chat_prompt_ids
from finch_rag.retrieval import shared_embedding_model
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

from llama_index.llms.finch import FinchLLM
from llama_index.postprocessor.finch import CACHE_KEY, FinchNodePostprocessor

from .tiny_models import TINY

WEIGHTING = RankWeighting(tau=1e-3, floor=0.0, reverse_packing=False)  # the top passage takes all

NODES = [
    NodeWithScore(node=TextNode(text=text, metadata={"title": f"T{i}"}, id_=str(i)), score=1.0 - i / 10)
    for i, text in enumerate(TINY.PASSAGES)
]


@pytest.fixture(scope="module")
def tiny() -> FinchCompressor:
    config = FinchConfig(target_tokens=16, chunk_size=32, progress=False)
    return FinchCompressor(TINY.build_tiny_model("llama"), TINY.build_tiny_tokenizer(), config)


def expected(compressor: FinchCompressor, weighting: RankWeighting) -> list[list[list[int]]]:
    """Kept positions of `FinchRAG.answer_from` on the same passages: what the allocation must give."""
    passages = [Passage(n.node.get_content(), n.node.metadata["title"]) for n in NODES]
    answer = FinchRAG(compressor=compressor, weighting=weighting, max_new_tokens=1).answer_from(TINY.QUESTION, passages)
    assert answer.compressed is not None
    return [positions.tolist() for positions in answer.compressed.kept_positions]


def test_a_users_weighting_reaches_the_kept_positions(tiny: FinchCompressor) -> None:
    """The postprocessor used to build its own RankWeighting() and never apply its weights."""
    processor = FinchNodePostprocessor(compressor=tiny, weighting=WEIGHTING)
    out = processor.postprocess_nodes(NODES, query_str=TINY.QUESTION)
    stored = tiny.store.get(out[0].node.metadata[CACHE_KEY])
    kept = [positions.tolist() for positions in stored.kept_positions]
    assert kept == expected(tiny, WEIGHTING) != expected(tiny, RankWeighting())
    # The LLM answers a query engine's prompt over those nodes from the store when its options match.
    context = "\n\n".join(n.node.get_content(metadata_mode=MetadataMode.LLM) for n in out)
    prompt = DEFAULT_TEXT_QA_PROMPT.format(context_str=context, query_str=TINY.QUESTION)
    same = FinchLLM(compressor=tiny, weighting=WEIGHTING, max_new_tokens=2).complete(prompt).additional_kwargs
    assert same["finch_reused"] and same[CACHE_KEY] == stored.cache_key
    other = FinchLLM(compressor=tiny, target_tokens=8, max_new_tokens=2).complete(prompt).additional_kwargs
    assert not other["finch_reused"] and other["kept_tokens"] == 8


def test_chunk_size_none_is_a_single_pass(tiny: FinchCompressor) -> None:
    """``chunk_size=None`` used to be dropped, so 512 (here the compressor's 32) was used."""
    assert FinchLLM(chunk_size=None).config.chunk_size is None
    assert FinchNodePostprocessor(chunk_size=None).config.chunk_size is None
    out = FinchNodePostprocessor(compressor=tiny, chunk_size=None).postprocess_nodes(NODES, query_str=TINY.QUESTION)
    assert tiny.store.get(out[0].node.metadata[CACHE_KEY]).cache.num_chunks == 1


def test_plain_chat_is_plain_generation(tiny: FinchCompressor) -> None:
    """No fake "compression with B = n - 1": the conversation goes to `FinchCompressor.generate_ids`."""
    llm = FinchLLM(compressor=tiny, max_new_tokens=4)
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="Hi"),
    ]
    reply = llm.chat(messages)
    ids = chat_prompt_ids(
        tiny.tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert reply.message.content == tiny.generate_ids(ids, 4)
    assert reply.additional_kwargs["kept_tokens"] == reply.additional_kwargs["original_tokens"] == len(ids)
    assert reply.additional_kwargs[CACHE_KEY] is None
    assert "".join(r.delta for r in llm.stream_chat(messages)) == reply.message.content


AUTO = {"target_tokens": "auto", "attention_mass": 0.5, "max_target_tokens": 40}


def test_an_automatic_budget_reaches_the_compressor(tiny: FinchCompressor) -> None:
    """``target_tokens="auto"`` keeps the fewest entries holding ``attention_mass``, below the cap a fixed B fills."""
    out = FinchNodePostprocessor(compressor=tiny, **AUTO).postprocess_nodes(NODES, query_str=TINY.QUESTION)
    stored = tiny.store.get(out[0].node.metadata[CACHE_KEY])
    fixed_out = FinchNodePostprocessor(compressor=tiny, target_tokens=40).postprocess_nodes(
        NODES, query_str=TINY.QUESTION
    )
    fixed = tiny.store.get(fixed_out[0].node.metadata[CACHE_KEY])
    assert (stored.config.target_tokens, stored.config.attention_mass, stored.config.max_target_tokens) == (
        "auto",
        0.5,
        40,
    )
    assert 0 < stored.kept_tokens < fixed.kept_tokens == 40
    # The LLM reuses that compression only with the same automatic options.
    context = "\n\n".join(n.node.get_content(metadata_mode=MetadataMode.LLM) for n in out)
    prompt = DEFAULT_TEXT_QA_PROMPT.format(context_str=context, query_str=TINY.QUESTION)
    same = FinchLLM(compressor=tiny, max_new_tokens=2, **AUTO).complete(prompt).additional_kwargs
    assert same["finch_reused"] and same["kept_tokens"] == stored.kept_tokens
    other = FinchLLM(compressor=tiny, max_new_tokens=2, **(AUTO | {"attention_mass": 0.2})).complete(prompt)
    assert not other.additional_kwargs["finch_reused"]
    assert tiny.store.get(other.additional_kwargs[CACHE_KEY]).config.attention_mass == 0.2


def test_bad_automatic_budget_options_are_refused() -> None:
    for bad in ({"target_tokens": "lots"}, {"target_tokens": "auto", "attention_mass": 1.5}, {"max_target_tokens": 0}):
        with pytest.raises(ValueError, match="target_tokens|attention_mass|max_target_tokens"):
            FinchNodePostprocessor(**bad)
    with pytest.raises(ValueError, match='attention_mass only applies with target_tokens="auto"'):
        FinchLLM(target_tokens=8, attention_mass=0.5)


def test_nodes_of_one_file_are_fused_and_nodes_of_two_files_are_not(tiny: FinchCompressor) -> None:
    """LlamaIndex's readers name the file (``file_path``), not a title: one file's nodes get `FinchRAG`'s fusion."""

    def kept(paths: list[str], weighting: RankWeighting | None = None) -> list[list[list[int]]]:
        nodes = [
            NodeWithScore(node=TextNode(text=text, metadata={"file_path": path}), score=1.0 - i / 10)
            for i, (text, path) in enumerate(zip(TINY.PASSAGES, paths, strict=True))
        ]
        processor = FinchNodePostprocessor(compressor=tiny, weighting=weighting or RankWeighting())
        out = processor.postprocess_nodes(nodes, query_str=TINY.QUESTION)
        return [positions.tolist() for positions in tiny.store.get(out[0].node.metadata[CACHE_KEY]).kept_positions]

    unfused = RankWeighting(sentence_fusion_temperature=None)
    one_file = ["/docs/a.txt"] * len(TINY.PASSAGES)
    two_files = [f"/docs/{index % 2}.txt" for index in range(len(TINY.PASSAGES))]
    passages = [Passage(text, metadata={"file_path": path}) for text, path in zip(TINY.PASSAGES, one_file, strict=True)]
    answer = FinchRAG(compressor=tiny, max_new_tokens=1).answer_from(TINY.QUESTION, passages)
    assert answer.stats["sentence_fusion"] and answer.compressed is not None
    finchrag = [positions.tolist() for positions in answer.compressed.kept_positions]
    assert kept(one_file) == finchrag != kept(one_file, unfused)
    assert kept(two_files) == kept(two_files, unfused)


class MiniLMEmbedding(BaseEmbedding):
    """The embedded all-MiniLM-L6-v2 as a LlamaIndex embedding; it records the queries it embeds."""

    queries: list[str] = []

    def _get_text_embedding(self, text: str) -> list[float]:
        return shared_embedding_model().encode(text, normalize_embeddings=True, show_progress_bar=False).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        self.queries.append(query)
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def test_a_llama_index_embedding_is_the_fusion_embedder(tiny: FinchCompressor) -> None:
    """``embedding_model=`` takes a ``BaseEmbedding``; the question goes through ``get_query_embedding``."""
    nodes = [NodeWithScore(node=TextNode(text=text, metadata={"file_path": "/a.txt"})) for text in TINY.PASSAGES]

    def kept(processor: FinchNodePostprocessor) -> list[list[int]]:
        out = processor.postprocess_nodes(nodes, query_str=TINY.QUESTION)
        return [positions.tolist() for positions in tiny.store.get(out[0].node.metadata[CACHE_KEY]).kept_positions]

    embedding = MiniLMEmbedding(queries=[])
    processor = FinchNodePostprocessor(compressor=tiny, embedding_model=embedding)
    assert processor.embedding_model.embed_model is embedding
    assert kept(processor) == kept(FinchNodePostprocessor(compressor=tiny))  # the default is this very model
    assert embedding.queries == [TINY.QUESTION]
    assert FinchLLM(compressor=tiny, embedding_model=embedding).embedding_model.embed_model is embedding
    with pytest.raises(TypeError, match="BaseEmbedding"):
        FinchNodePostprocessor(compressor=tiny, embedding_model=3)


def test_the_model_never_reads_a_cache_key_on_the_plain_paths(tiny: FinchCompressor) -> None:
    """A node's ``finch_cache_key`` line (LlamaIndex renders metadata into the prompt) is bookkeeping, not text.

    On a prompt FinchLLM does not compress (a chat engine's system message, a free completion), the model's ids are
    those of the same prompt without the key line: a new key (new options, a new release) cannot change an answer.
    """
    key_line = f"{CACHE_KEY}: finch-0123456789abcdef01234567\n"
    system = "Use these documents.\n\ntitle: T0\n{key}\nThe lighthouse is yellow."
    question = ChatMessage(role=MessageRole.USER, content="What colour is the lighthouse?")
    plain_tokenizer = TINY.build_tiny_tokenizer(chat_template=False)
    for compressor in (tiny, FinchCompressor(tiny.model, plain_tokenizer, tiny.config)):
        llm = FinchLLM(compressor=compressor)
        with_key, without = (
            llm._prepare_messages([ChatMessage(role=MessageRole.SYSTEM, content=system.format(key=key)), question])
            for key in (key_line, "")
        )
        assert with_key.prompt_ids == without.prompt_ids and without.prompt_ids is not None
    llm = FinchLLM(compressor=tiny)
    prompt = "title: T0\n{key}\nThe lighthouse is yellow. What colour is it?"
    with_key, without = (llm._prepare_prompt(prompt.format(key=key), False).prompt_ids for key in (key_line, ""))
    assert with_key == without
