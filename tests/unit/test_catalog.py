"""The local model catalog, with the tiny Llama as a local source."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hearth.catalog import (
    MANIFEST_FILE,
    ModelCatalog,
    PullProgress,
    estimate_parameters,
    estimate_vram_bytes,
    read_architecture,
)
from hearth.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from hearth.tinymodel import build_tiny_llama

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

# The tiny Llama: hidden 64, 2 layers, 4 heads of 16, MLP 128, vocabulary 899, untied head.
TINY_PARAMETERS = 899 * 64 * 2 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("source") / "tiny-llama")


@pytest.fixture
def catalog(tmp_path: Path) -> ModelCatalog:
    return ModelCatalog(tmp_path / "models")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_a_local_folder_records_its_files_and_facts(catalog: ModelCatalog, tiny_source: Path) -> None:
    entry = catalog.pull(str(tiny_source))

    assert entry.name == "tiny-llama"
    assert entry.path == (catalog.root / "tiny-llama").absolute()
    assert entry.source == f"path:{tiny_source.resolve()}"
    assert entry.revision.startswith("sha256:")
    source_files = {p.name for p in tiny_source.iterdir() if p.is_file()}
    assert set(entry.files) == source_files
    for relative, record in entry.files.items():
        assert record.sha256 == sha256_of(tiny_source / relative)
        assert record.size == (tiny_source / relative).stat().st_size
        assert (entry.path / relative).read_bytes() == (tiny_source / relative).read_bytes()
    assert entry.context_length == 2048
    assert entry.parameters == TINY_PARAMETERS
    assert entry.dtype == "float32"
    assert entry.vram_estimate_bytes == estimate_vram_bytes(
        TINY_PARAMETERS, 4, context_length=2048, layers=2, kv_heads=4, head_dim=16
    )
    manifest = json.loads((entry.path / MANIFEST_FILE).read_text())
    assert manifest["source"] == entry.source and manifest["files"]["config.json"]["size"] > 0


def test_the_config_estimate_agrees_with_the_safetensors_count(tiny_source: Path) -> None:
    assert estimate_parameters(read_architecture(tiny_source)) == TINY_PARAMETERS


def test_list_get_and_verify(catalog: ModelCatalog, tiny_source: Path) -> None:
    pulled = catalog.pull(str(tiny_source), "tiny")

    assert catalog.list() == [pulled]
    assert catalog.get("tiny") == pulled
    result = catalog.verify("tiny")
    assert result.ok and result.intact == len(pulled.files)
    with pytest.raises(NotFound) as caught:
        catalog.get("absent")
    assert caught.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        catalog.get("../escape")


def test_verify_reports_changed_missing_and_extra_files(catalog: ModelCatalog, tiny_source: Path) -> None:
    entry = catalog.pull(str(tiny_source), "tiny")
    weights = entry.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    (entry.path / "tokenizer.json").unlink()
    (entry.path / "notes.txt").write_text("not part of the model")

    result = catalog.verify("tiny")

    assert not result.ok
    assert result.changed == ("model.safetensors",)
    assert result.missing == ("tokenizer.json",)
    assert result.extra == ("notes.txt",)
    assert result.intact == len(entry.files) - 2
    assert result.to_json()["ok"] is False


def test_remove(catalog: ModelCatalog, tiny_source: Path) -> None:
    catalog.pull(str(tiny_source), "tiny")

    catalog.remove("tiny")

    assert catalog.list() == []
    assert list(catalog.root.iterdir()) == []
    with pytest.raises(NotFound):
        catalog.remove("tiny")


def test_pulling_a_name_twice_needs_force(catalog: ModelCatalog, tiny_source: Path) -> None:
    first = catalog.pull(str(tiny_source), "tiny")
    with pytest.raises(AlreadyExists) as caught:
        catalog.pull(str(tiny_source), "tiny")
    assert caught.value.reason == "MODEL_EXISTS"
    (first.path / "notes.txt").write_text("left by hand")

    again = catalog.pull(str(tiny_source), "tiny", force=True)

    assert again.files == first.files
    assert catalog.verify("tiny").ok  # the old folder, notes and all, was replaced
    assert sorted(p.name for p in catalog.root.iterdir()) == ["tiny"]


def test_a_pull_that_fails_midway_leaves_nothing(
    catalog: ModelCatalog, tiny_source: Path, tmp_path: Path
) -> None:
    vanishing = tmp_path / "vanishing"
    shutil.copytree(tiny_source, vanishing)
    reports: list[PullProgress] = []

    def source_vanishes(update: PullProgress) -> None:
        reports.append(update)
        if update.completed > 0:  # once the first bytes are copied
            shutil.rmtree(vanishing, ignore_errors=True)

    with pytest.raises(FailedPrecondition) as caught:
        catalog.pull(str(vanishing), "tiny", progress=source_vanishes)

    assert caught.value.reason == "MODEL_PULL_FAILED"
    assert reports[0].total == sum(p.stat().st_size for p in tiny_source.iterdir())
    assert 0 < reports[-1].completed < reports[0].total
    assert catalog.list() == []
    assert list(catalog.root.iterdir()) == []


class TestSourceHandling:
    def test_a_missing_folder_is_not_found(self, catalog: ModelCatalog, tmp_path: Path) -> None:
        with pytest.raises(NotFound) as caught:
            catalog.pull(str(tmp_path / "no-such-model"))
        assert caught.value.reason == "MODEL_SOURCE_NOT_FOUND"

    def test_a_file_is_not_a_model_folder(self, catalog: ModelCatalog, tmp_path: Path) -> None:
        (tmp_path / "weights.bin").write_bytes(b"x")
        with pytest.raises(InvalidArgument):
            catalog.pull(str(tmp_path / "weights.bin"))

    def test_a_malformed_repo_id_or_name(self, catalog: ModelCatalog, tiny_source: Path) -> None:
        with pytest.raises(InvalidArgument):
            catalog.pull("not a repo!")
        with pytest.raises(InvalidArgument):
            catalog.pull(str(tiny_source), "bad/name")
        with pytest.raises(InvalidArgument) as caught:
            catalog.pull("hf:owner/model@v1", revision="v2")
        assert caught.value.field == "revision"

    def test_the_hub_unreachable_offline_leaves_nothing(self, catalog: ModelCatalog) -> None:
        # conftest sets HF_HUB_OFFLINE=1: the Hub is never contacted.
        with pytest.raises(Unavailable) as caught:
            catalog.pull("hf:owner/some-model@main")
        assert caught.value.reason == "MODEL_SOURCE_UNREACHABLE"
        assert caught.value.metadata["source"] == "hf:owner/some-model"
        assert list(catalog.root.iterdir()) == []

    def test_a_folder_with_only_a_config_gets_estimates(self, catalog: ModelCatalog, tmp_path: Path) -> None:
        folder = tmp_path / "gpt2ish"
        folder.mkdir()
        config = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 512, "vocab_size": 100}
        (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}))

        entry = catalog.pull(str(folder))

        assert entry.context_length == 512
        assert entry.dtype == "bfloat16"
        assert entry.parameters == estimate_parameters(read_architecture(folder)) > 0


class TestVramEstimate:
    def test_llama2_7b_in_fp16_at_4k(self) -> None:
        weights = 6_738_415_616 * 2
        kv_cache = 4096 * 2 * 32 * 32 * 128 * 2  # 2 GiB
        assert kv_cache == 2 * 1024**3
        got = estimate_vram_bytes(6_738_415_616, 2, context_length=4096, layers=32, kv_heads=32, head_dim=128)
        assert got == (weights + kv_cache) * 11 // 10 == 17_186_746_368

    def test_batch_tokens_size_the_kv_cache(self) -> None:
        one = estimate_vram_bytes(0, 2, context_length=1000, layers=10, kv_heads=8, head_dim=128)
        batch = estimate_vram_bytes(
            0, 2, context_length=1000, layers=10, kv_heads=8, head_dim=128, batch_tokens=4000
        )
        assert one == 1000 * 2 * 10 * 8 * 128 * 2 * 11 // 10
        assert batch == 4 * one

    def test_rounds_up_and_refuses_nonsense(self) -> None:
        assert estimate_vram_bytes(1, 1, context_length=0, layers=0, kv_heads=0, head_dim=0) == 2
        with pytest.raises(ValueError):
            estimate_vram_bytes(-1, 2, context_length=1, layers=1, kv_heads=1, head_dim=1)
        with pytest.raises(ValueError):
            estimate_vram_bytes(1, 0, context_length=1, layers=1, kv_heads=1, head_dim=1)
