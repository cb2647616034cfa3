"""hearth.tinymodel: a random tiny Llama built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.tinymodel import MARKER_FILE, build_tiny_llama, is_complete

pytestmark = pytest.mark.unit


def test_builds_a_model_that_transformers_loads(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_llama(tmp_path / "tiny", context_length=256)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)

    assert 500 < len(tokenizer) <= 1000
    assert {tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token} == {
        "<s>",
        "</s>",
        "<unk>",
        "<pad>",
    }
    ids = tokenizer("The hearth was warm.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert model.config.model_type == "llama"
    assert model.config.max_position_embeddings == 256
    assert model.config.vocab_size == len(tokenizer)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))
    assert "random" in (folder / MARKER_FILE).read_text().lower()


def test_is_idempotent_and_seeded(tmp_path: Path) -> None:
    folder = build_tiny_llama(tmp_path / "a", seed=3)
    weights = (folder / "model.safetensors").stat()

    again = build_tiny_llama(tmp_path / "a", seed=3)
    same_seed = build_tiny_llama(tmp_path / "b", seed=3)

    assert again == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights.st_mtime_ns  # not rebuilt
    assert (same_seed / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_an_incomplete_folder_is_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert not is_complete(folder)

    build_tiny_llama(folder)

    assert is_complete(folder)
    assert not list(tmp_path.glob(".tiny.building-*"))


def test_runs_to_max_tokens_makes_greedy_decoding_never_pick_the_end_token(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_llama(tmp_path / "endless", hidden_size=256, heads=4, runs_to_max_tokens=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    ids = tokenizer("The hearth was warm.", return_tensors="pt")["input_ids"]

    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=300, do_sample=False, eos_token_id=tokenizer.eos_token_id)
        logits = model(input_ids=out).logits[0]

    assert out.shape[1] == ids.shape[1] + 300  # it ran to max_new_tokens
    assert model.config.head_dim == 64  # what vLLM's CPU attention accepts
    assert torch.all(logits[:, tokenizer.eos_token_id] == 0)
    assert torch.all(logits.max(dim=-1).values > 0)
