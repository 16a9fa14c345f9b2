"""Greedy generation by onnxruntime from the bundled decode samples, the way a resident KV cache runs them.

A decode graph in the Hugging Face layout (``input_ids`` [1,1], ``attention_mask`` [1,C], ``position_ids`` [1,1],
``past_key_values.{i}.key/value`` [1,H,C-1,D] -> ``logits``, ``present.{i}.*`` [1,H,C,D]) is stepped over a
cache of C-1 past slots in which slot p holds position p: the mask is 1 on the filled slots and on the new
token's (the last slot), 0 on the rest, and after each step the new token's K/V (the last slot of present)
goes to slot p. The prompt goes in one token at a time, or its first tokens through a prefill graph
(``input_ids``/``attention_mask``/``position_ids`` [1,P] -> ``logits``, ``present.*`` [1,H,P,D]) into slots
0..P-1. Used by export_samples.py to check the greedy tokens it stores and by tests/test_samples.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_generate(decode: str | Path, prompt: np.ndarray, new_tokens: int,
                 prefill: str | Path | None = None) -> np.ndarray:
    """The `new_tokens` greedy (argmax) token ids after `prompt` (int64 [1, N]), as int64 [1, new_tokens]."""
    step = _session(decode)
    context = dict((i.name, i.shape) for i in step.get_inputs())["attention_mask"][1]
    past = {i.name: np.zeros(i.shape, np.float32) for i in step.get_inputs() if i.name.startswith("past_key_values.")}
    if len(prompt[0]) + new_tokens > context:
        raise ValueError(f"{len(prompt[0])} + {new_tokens} tokens do not fit the context of {context}")

    def store(session, values, slots, source):
        for output, value in zip(session.get_outputs()[1:], values):
            past[output.name.replace("present", "past_key_values")][:, :, slots] = value[:, :, source]

    ids, position, logits = [int(t) for t in prompt[0]], 0, None
    if prefill is not None:
        first = _session(prefill)
        position = first.get_inputs()[0].shape[1]
        logits, *values = first.run(None, {"input_ids": prompt[:, :position],
                                           "attention_mask": np.ones((1, position), np.int64),
                                           "position_ids": np.arange(position, dtype=np.int64)[None]})
        store(first, values, slice(0, position), slice(None))
    while len(ids) < len(prompt[0]) + new_tokens:
        if position == len(ids):  # every known token is in: the last logits choose the next one
            ids.append(int(logits[0, -1].argmax()))
            continue
        mask = np.zeros((1, context), np.int64)
        mask[:, :position] = mask[:, -1] = 1
        logits, *values = step.run(None, {"input_ids": np.array([[ids[position]]], np.int64), "attention_mask": mask,
                                          "position_ids": np.array([[position]], np.int64), **past})
        store(step, values, position, -1)
        position += 1
    return np.array([ids[len(prompt[0]):]], np.int64)
