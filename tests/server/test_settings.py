"""`ServerSettings`: validated at construction, and built from a Ray Serve config file's flat options."""

from __future__ import annotations

import pytest

from finch_rag import FinchConfig
from finch_rag.server import ServerSettings


def test_defaults_serve_the_embedded_model_on_loopback() -> None:
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.model, settings.api_key) == ("127.0.0.1", 8000, None, None)
    assert settings.model_id == "SmolLM2-135M-Instruct" and settings.compression
    assert settings.accepts_model(None) and settings.accepts_model("SmolLM2-135M-Instruct")
    assert not settings.accepts_model("gpt-4o")
    named = ServerSettings(model="org/model", served_model_name="mine")
    assert named.model_id == "mine" and named.accepts_model("org/model") and not named.accepts_model("other")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_queue": -1}, "max_queue"),
        ({"batch_window_ms": -5}, "batch_window_ms"),
        ({"port": 70000}, "port"),
        ({"api_key": " "}, "api_key"),
        ({"allocation": "best"}, "allocation"),
        ({"default_temperature": 3.0}, "default_temperature"),
        ({"kept_text_threshold": 0}, "kept_text_threshold"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"dtype": "nn"}, "dtype must be one of"),
        ({"embedding_model": " "}, "embedding_model"),
        ({"embedding_model": 3}, "embedding_model"),  # a name is looked up in our table, never on the torch module
    ],
)
def test_bad_settings_name_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerSettings(**options)  # type: ignore[arg-type]


def test_flat_options_from_a_config_file() -> None:
    settings = ServerSettings.from_options(
        {"model": None, "target_tokens": 128, "chunk_size": None, "max_batch_size": 4, "api_key": None}
    )
    assert settings.config == FinchConfig(target_tokens=128, chunk_size=None, progress=False)
    assert settings.max_batch_size == 4 and settings.model is None
    assert ServerSettings.from_options({}).config == FinchConfig(progress=False)
    assert ServerSettings.from_options({"dtype": "bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ValueError, match="max_batch_sise"):
        ServerSettings.from_options({"max_batch_sise": 4})


def test_flat_options_take_the_automatic_budget() -> None:
    auto = ServerSettings.from_options({"target_tokens": "auto", "attention_mass": 0.6, "max_target_tokens": 256})
    assert auto.config == FinchConfig(target_tokens="auto", attention_mass=0.6, max_target_tokens=256, progress=False)
    with pytest.raises(ValueError, match='attention_mass only applies with target_tokens="auto"'):
        ServerSettings.from_options({"target_tokens": 128, "attention_mass": 0.6})
    with pytest.raises(ValueError, match="max_target_tokens"):
        ServerSettings.from_options({"target_tokens": "auto", "max_target_tokens": 0})


def test_the_server_bounds_its_model_store_with_its_setting():
    """The server puts every compression in the model's store: `ServerSettings.store_bytes` is that store's bound."""
    from servers import make_tiny_compressor, serving

    compressor = make_tiny_compressor()
    with serving(compressor, store_bytes=4096):
        assert compressor.store.max_bytes == 4096
