"""What orchestratord knows of each model from the models config: context
length, prices, the weights' catalog digest, and a local tokenizer to count
a task's context exactly.

A model served from a local folder (transformers, vllm) with a
``tokenizer.json`` is counted with that tokenizer (the ``tokenizers``
library, loaded once, on first use); any other model (a remote API, the sim
engine) with the estimate of ``bundles.estimate_counter``, and the bundle says
so.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from hearth.catalog import MANIFEST_FILE, ModelCatalog
from hearth.runtime import ModelConfig
from orchestratord.domain.bundles import TokenCount, estimate_counter
from orchestratord.domain.ports import ModelFacts

log = logging.getLogger(__name__)

#: Token counts kept per model (texts of task outputs, INDEX, memories).
_CACHED_COUNTS = 4096


class ConfiguredModels:
    """:class:`orchestratord.domain.ports.ModelCatalog` over the models config.

    Args:
        models: the ``models:`` list.
        roles: role -> model names in order (models_file's ``roles:``); a
            model's own ``roles`` add to it, in config order.
        default_role: the role of a task that names none.
    """

    def __init__(
        self, models: Sequence[ModelConfig], roles: Mapping[str, Sequence[str]], default_role: str = "default"
    ) -> None:
        self._configs = {m.name: m for m in models}
        self._facts = {m.name: _facts_of(m) for m in models}
        chains: dict[str, list[str]] = {role: list(names) for role, names in roles.items()}
        for model in models:
            for role in model.roles:
                chain = chains.setdefault(role, [])
                if model.name not in chain:
                    chain.append(model.name)
        self._chains = chains
        self._default_role = default_role
        self._counters: dict[str, TokenCount] = {}

    def facts(self, model: str) -> ModelFacts | None:
        return self._facts.get(model)

    def resolve(self, model: str, role: str) -> ModelFacts | None:
        if model:
            return self._facts.get(model)
        for name in self._chains.get(role or self._default_role, ()) or self._chains.get(
            self._default_role, ()
        ):
            if name in self._facts:
                return self._facts[name]
        return None

    def chain(self, role: str) -> list[str]:
        """The configured models of ``role``, best first (then the default role's)."""
        chain = list(self._chains.get(role or self._default_role, ()))
        for name in self._chains.get(self._default_role, ()):
            if name not in chain:
                chain.append(name)
        return chain

    def counter(self, facts: ModelFacts | None) -> TokenCount:
        if facts is None:
            return estimate_counter()
        counter = self._counters.get(facts.name)
        if counter is None:
            counter = self._counters[facts.name] = _tokenizer_counter(self._configs[facts.name])
        return counter


def _facts_of(model: ModelConfig) -> ModelFacts:
    return ModelFacts(
        name=model.name,
        context_length=model.context_length,
        price_input_per_1k=model.price_input_per_1k,
        price_output_per_1k=model.price_output_per_1k,
        weights_digest=_weights_digest(model.path),
        remote=model.is_remote(),
    )


def _weights_digest(path: str) -> str:
    """The catalog's revision of a model folder pulled with `hearth models
    pull` (a Hugging Face commit or ``sha256:`` of its files); "" otherwise."""
    if not path:
        return ""
    folder = Path(path).expanduser()
    if not (folder / MANIFEST_FILE).is_file():
        return ""
    try:
        return ModelCatalog(folder.parent).get(folder.name).revision
    except Exception as err:  # a broken manifest leaves the digest unknown, never the service down
        log.warning("model %s: cannot read the catalog manifest: %s", path, err)
        return ""


def _tokenizer_counter(model: ModelConfig) -> TokenCount:
    if model.engine not in ("transformers", "vllm") or not model.path:
        return estimate_counter()
    file = Path(model.path).expanduser() / "tokenizer.json"
    if not file.is_file():
        return estimate_counter()
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as err:
        log.warning("model %s: cannot load %s (%s); estimating tokens", model.name, file, err)
        return estimate_counter()

    # No token covers more than the longest vocabulary entry's characters
    # (bytes, for byte-level BPE); halved, the bound stays safe whatever the
    # normalizer adds or removes.
    longest = max((len(piece) for piece in tokenizer.get_vocab()), default=1)

    @functools.lru_cache(maxsize=_CACHED_COUNTS)
    def count(text: str) -> int:
        # Cached: a project's INDEX and task outputs come back in bundle after bundle.
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    def at_least(text: str) -> int:
        return len(text) // (2 * longest)

    def head(text: str, limit: int) -> tuple[str, int]:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= limit:
            return text, len(encoding.ids)
        # Cut after token ``limit`` (by its character offsets); text cut at a
        # token boundary may tokenize a little differently, so measure and
        # step back until it fits.
        end = limit
        while end > 0:
            cut = text[: encoding.offsets[end - 1][1]]
            tokens = count(cut)
            if tokens <= limit:
                return cut, tokens
            end -= max(1, tokens - limit)
        return "", 0

    return TokenCount(count, f"tokenizer:{model.name}", exact=True, at_least=at_least, head=head)
