"""FinchNodePostprocessor's async path: the same nodes as the sync path, and the event loop is never blocked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from llama_index.postprocessor.finch import FinchNodePostprocessor

from .island_corpus import ISLAND, QUESTIONS


@pytest.mark.slow
def test_apostprocess_nodes_runs_off_the_event_loop(compressor: Any) -> None:
    nodes = [
        NodeWithScore(node=TextNode(text=text, metadata={"title": title}, id_=f"n{i}"), score=1.0 - i / 10)
        for i, (title, text) in enumerate(ISLAND)
    ]
    postprocessor = FinchNodePostprocessor(compression_ratio=0.5, compressor=compressor)
    question = QUESTIONS[2][0]

    async def run() -> tuple[list[NodeWithScore], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        out = await postprocessor.apostprocess_nodes(nodes, query_str=question)
        task.cancel()
        return out, ticks

    out, ticks = asyncio.run(run())
    assert ticks > 20  # the loop kept running while the model compressed (seconds on a CPU)
    expected = postprocessor.postprocess_nodes(nodes, query_str=question)
    assert [(n.node.node_id, n.score, n.node.get_content(), n.node.metadata) for n in out] == [
        (n.node.node_id, n.score, n.node.get_content(), n.node.metadata) for n in expected
    ]
    assert "potatoes" in next(n for n in out if n.node.metadata["title"] == "Farming").node.get_content()
