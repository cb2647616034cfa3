"""What changed between two runs of a task (``hearth runs diff A B``).

A rerun is meant to reproduce a run; when its output differs, the question is
why: other context, another prompt, another model or weights, other sampling.
:func:`diff_runs` puts the two runs side by side on exactly those points.

Context is compared by the used items of the two stored snapshots, matched by
source: an item only ``b`` used is *added*, one only ``a`` used is *removed*,
and one both used with a different text (a new output of a required task, a
summary instead of the full text, another cut) is *changed*. Items left out
(dropped, excluded) are not context and are not compared.

This module is pure: no I/O, no clocks.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestratord.domain.bundles import Fate
from orchestratord.domain.tasks import ContextSnapshot, TaskRun

#: Lines of context around each change in :attr:`RunDiff.output_diff`.
OUTPUT_DIFF_CONTEXT_LINES = 3

#: The fates of the items that went into the prompt, as snapshots store them.
_USED_FATES = frozenset(f.value for f in (Fate.INCLUDED, Fate.SUMMARISED, Fate.TRUNCATED))

#: The fields of a run that say what served it, compared as they are.
_SERVING_FIELDS = ("model", "engine", "weights_digest")


@dataclass(frozen=True, slots=True)
class RunDiff:
    """Run ``a`` against run ``b``; each pair below is (a's, b's)."""

    run_ids: tuple[int, int]
    task_ids: tuple[int, int]
    context_hashes: tuple[str, str]
    #: Both snapshots were at hand, so the context lists below are complete;
    #: False leaves them empty and ``same_prompt`` None.
    context_known: bool
    #: Sources of the items only b used, ascending.
    context_added: tuple[str, ...] = ()
    #: Sources of the items only a used, ascending.
    context_removed: tuple[str, ...] = ()
    #: Sources both used with a different text, ascending.
    context_changed: tuple[str, ...] = ()
    #: The prompts sent were byte-identical; None when a snapshot is missing.
    same_prompt: bool | None = None
    #: "model", "engine", "weights_digest" -> (a, b), only where they differ.
    serving_changes: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Sampling key -> (a, b), only where they differ; None for a key a run
    #: did not set.
    sampling_changes: Mapping[str, tuple[object, object]] = field(default_factory=dict)
    same_output: bool = True
    #: A unified diff of the outputs ("" when they are the same), headed
    #: "run <a>" / "run <b>".
    output_diff: str = ""
    input_tokens: tuple[int, int] = (0, 0)
    output_tokens: tuple[int, int] = (0, 0)

    @property
    def same_context(self) -> bool:
        """The two runs had equal context: equal content hashes (the same
        used items with the same texts, in the same order, counted by the
        same counter). Known even without the snapshots."""
        return self.context_hashes[0] == self.context_hashes[1]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready form (for ``--json``): pairs become ``{"a": .., "b": ..}``,
        tuples become lists, and ``same_context`` is included."""
        return {
            "runs": _pair(self.run_ids),
            "tasks": _pair(self.task_ids),
            "context": {
                "hashes": _pair(self.context_hashes),
                "same": self.same_context,
                "known": self.context_known,
                "added": list(self.context_added),
                "removed": list(self.context_removed),
                "changed": list(self.context_changed),
            },
            "same_prompt": self.same_prompt,
            "serving_changes": {k: _pair(v) for k, v in self.serving_changes.items()},
            "sampling_changes": {k: _pair(v) for k, v in self.sampling_changes.items()},
            "same_output": self.same_output,
            "output_diff": self.output_diff,
            "input_tokens": _pair(self.input_tokens),
            "output_tokens": _pair(self.output_tokens),
        }


def diff_runs(
    a: TaskRun,
    snap_a: ContextSnapshot | None,
    b: TaskRun,
    snap_b: ContextSnapshot | None,
) -> RunDiff:
    """Compare run ``a`` with run ``b`` (usually a run and its rerun).

    ``snap_a`` and ``snap_b`` are the snapshots stored under the runs'
    ``context_hash`` (None when not found); without both, the context is
    compared by hash only (:attr:`RunDiff.same_context`) and the prompt is
    unknown. The runs need not be of the same task.

    The output diff splits on "\\n" only, so a difference in line endings or
    a trailing newline shows up as changed lines rather than an empty diff.
    Sampling values are compared with ``==``, so 1 and 1.0 are equal.
    """
    known = snap_a is not None and snap_b is not None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    same_prompt: bool | None = None
    if snap_a is not None and snap_b is not None:
        items_a, items_b = _used_texts(snap_a), _used_texts(snap_b)
        added = tuple(sorted(items_b.keys() - items_a.keys()))
        removed = tuple(sorted(items_a.keys() - items_b.keys()))
        changed = tuple(sorted(s for s in items_a.keys() & items_b.keys() if items_a[s] != items_b[s]))
        same_prompt = snap_a.prompt == snap_b.prompt

    serving = {
        name: (getattr(a, name), getattr(b, name))
        for name in _SERVING_FIELDS
        if getattr(a, name) != getattr(b, name)
    }
    sampling = {
        key: (a.sampling.get(key), b.sampling.get(key))
        for key in sorted(a.sampling.keys() | b.sampling.keys())
        if a.sampling.get(key) != b.sampling.get(key)
    }

    same_output = a.output == b.output
    output_diff = ""
    if not same_output:
        lines = difflib.unified_diff(
            a.output.split("\n"),
            b.output.split("\n"),
            fromfile=f"run {a.run_id}",
            tofile=f"run {b.run_id}",
            n=OUTPUT_DIFF_CONTEXT_LINES,
            lineterm="",
        )
        output_diff = "\n".join(lines)

    return RunDiff(
        run_ids=(a.run_id, b.run_id),
        task_ids=(a.task_id, b.task_id),
        context_hashes=(a.context_hash, b.context_hash),
        context_known=known,
        context_added=added,
        context_removed=removed,
        context_changed=changed,
        same_prompt=same_prompt,
        serving_changes=serving,
        sampling_changes=sampling,
        same_output=same_output,
        output_diff=output_diff,
        input_tokens=(a.input_tokens, b.input_tokens),
        output_tokens=(a.output_tokens, b.output_tokens),
    )


def _used_texts(snapshot: ContextSnapshot) -> dict[str, str]:
    """source -> text of the items that went into the prompt; the first one
    wins should a source repeat (the allocator never repeats one)."""
    texts: dict[str, str] = {}
    for item in snapshot.items:
        if item.get("fate") in _USED_FATES:
            texts.setdefault(str(item.get("source", "")), str(item.get("text", "")))
    return texts


def _pair(values: tuple[object, object]) -> dict[str, object]:
    return {"a": values[0], "b": values[1]}
