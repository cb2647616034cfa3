"""A tiny, randomly initialised Llama model built offline, for tests and demos.

:func:`build_tiny_llama` trains a small byte-level BPE tokenizer on a built-in
English corpus and saves it, with a two-layer Llama whose weights are random,
in a folder that ``AutoTokenizer.from_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` load. It needs no network and takes
well under a few seconds on a laptop CPU. The text it generates is noise: it
exists so that the transformers engine, and everything above it, can run end
to end on any machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported lazily: importing it takes seconds
    from transformers import PreTrainedTokenizerFast

#: Written last into the model folder; its presence marks a complete build.
MARKER_FILE = "HEARTH_TINY_MODEL.txt"

_VOCAB_SIZE = 1000
_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER_FILE)

_CORPUS = """\
The hearth was the centre of the old house. In the morning someone would rake the ashes,
lay new wood on the embers and blow until the flames rose again. The kettle hung from an
iron hook above the fire, and by the time the water boiled the whole family was awake.

A small model running on a local machine can answer questions, write short programs and
summarise long documents. It does not need to send anything to a remote server, so private
notes, source code and personal letters stay on the computer where they were written.

Scheduling work across many requests is an old problem. A good scheduler keeps every worker
busy, never starves a small job behind a large one, and tells the caller early when a queue
is full instead of letting the request wait forever. Fair queues, priorities and deadlines
are the usual tools, and each of them has a cost that must be measured.

The river ran past the village and under the stone bridge. Children threw sticks from one
side and raced to the other to see which would appear first. In summer the water was low
and warm; in winter it rose, brown and fast, and the older people told stories of the year
it reached the doors of the church.

To cancel a job, the client sends a request with the job identifier. Every service that
holds the job stops its part of the work, releases what it reserved and records why the job
ended. A trace shows each step: when the request arrived, where it was placed, how long the
first token took and how many tokens were generated before the end.

She opened the window and listened. Somewhere a dog was barking, a door closed, and a car
went slowly down the hill. The light was changing from grey to gold, and the first birds
had started to sing in the garden behind the house.

Memory for an assistant is a set of short notes with a scope and a kind: a fact about the
project, a decision that was made, a preference of the user. When a new task begins, the
most relevant notes are found by meaning rather than by exact words and added to the prompt.
Numbers such as 1, 2, 3, 10, 42, 100 and 2048 appear in logs, and so do words like error,
warning, started, finished, queued, running, aborted, length and stop.
"""


_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_llama(
    dest: Path,
    *,
    seed: int = 0,
    context_length: int = 2048,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    runs_to_max_tokens: bool = False,
) -> Path:
    """Build a random tiny Llama and its tokenizer in ``dest``; return ``dest``.

    The tokenizer is a byte-level BPE (about 1000 tokens, with ``<s>``,
    ``</s>``, ``<unk>`` and ``<pad>``) trained on a built-in corpus, saved as a
    ``PreTrainedTokenizerFast`` that prepends ``<s>``. The model is a
    ``LlamaForCausalLM`` with hidden size 64, two layers and four heads,
    initialised with ``torch.manual_seed(seed)``: the same seed gives the same
    weights. ``hidden_size``, ``layers`` and ``heads`` make it bigger where a
    benchmark needs a realistic cost per token (768, 12, 12 is GPT-2 small's
    shape, about 85M parameters). ``dest/HEARTH_TINY_MODEL.txt`` explains that the weights are
    random and how to configure a real model.

    With ``runs_to_max_tokens`` the output row of ``</s>`` is zero: its logit
    is always 0 while the largest of the other random logits is positive
    (short of odds of 2 to the -900), so greedy decoding never ends a
    generation before ``max_tokens``. Tests that cancel a long generation and
    benchmarks that compare token counts need that; sampling may still end one.

    Idempotent: when ``dest`` already holds a complete build it returns at
    once. The build goes to a sibling folder first and is renamed into place,
    so a reader never sees a half-written model.
    """
    dest = Path(dest)
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _build(
            staging,
            seed=seed,
            context_length=context_length,
            shape=(hidden_size, layers, heads),
            runs_to_max_tokens=runs_to_max_tokens,
        )
        if dest.exists():
            if is_complete(dest):  # another process finished first
                return dest
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return dest


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds every file of a finished tiny-model build."""
    return all((Path(folder) / name).is_file() for name in _REQUIRED_FILES)


def _build(
    folder: Path, *, seed: int, context_length: int, shape: tuple[int, int, int], runs_to_max_tokens: bool
) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer()
    hidden_size, layers, heads = shape
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Seed a private generator state rather than leaving the global one changed
    # for the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if runs_to_max_tokens:
        with torch.no_grad():
            model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / MARKER_FILE).write_text(_notice(context_length), encoding="utf-8")


def _train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos, unk = _SPECIAL_TOKENS
    raw = Tokenizer(models.BPE(unk_token=unk))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(_SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so any text (accents, CJK, emoji)
        # encodes without <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, raw.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        model_max_length=1_000_000,
    )
    # A small chat template, so conversations take the same path as with a
    # real instruction-tuned model.
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _notice(context_length: int) -> str:
    return f"""\
This folder holds Hearth's tiny test model, built by hearth.tinymodel.build_tiny_llama.

The weights are RANDOM. The model has never been trained: the text it generates is
noise. It exists so that the worker, the orchestrator and the tests can run end to end
on any machine, offline, without downloading anything.

Its context length is {context_length} tokens and its tokenizer is a byte-level BPE of
about {_VOCAB_SIZE} tokens trained on a few paragraphs of English.

To serve a real model, download it (a Hugging Face folder with config.json, the
safetensors weights and the tokenizer files) and list it in the `models:` list of
hearth.yaml, then point the worker at it:

    models:
      - name: qwen2.5-0.5b-instruct
        path: /models/Qwen2.5-0.5B-Instruct
        context_length: 32768
    worker:
      engine: transformers
      model: qwen2.5-0.5b-instruct
"""
