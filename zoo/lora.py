"""LoRA fine-tuning (Hu et al., 2021): low-rank adapters on a backbone's
attention and feed-forward projections, everything else of the backbone
frozen, the task's head trained whole.

- `enable_lora`: Keras's own `enable_lora` on every `Dense`/`EinsumDense` of
  the backbone's blocks, the rest of the backbone frozen, and the frozen
  base pinned by the SHA-256 of its weights (`model.lora`).
- `merged_weights`: the weights with each adapter merged into its kernel and
  dropped, which a model built without adapters takes: what presets and
  exports hold (`PresetModel.inference_copy`), so serving needs nothing new
  and runs at the speed of a fully fine-tuned model.
- `save_training_state` / `load_training_state`: what a checkpoint holds.
  For a LoRA model, its trainable variables (adapters and head) and the
  optimizer's state for them: megabytes, where a MiniLM checkpoint with its
  AdamW state is 270 MB. Keras's own `save_weights` would not do: it writes
  each adapter merged into its kernel, and loading that back zeroes both
  adapter matrices, which leaves their gradients zero.

Imports Keras and NumPy; nothing from the models.
"""

import hashlib
import json
from pathlib import Path

import keras
import numpy as np

from zoo.keras_compat import set_untracked

# The peak learning rate of LoRA fine-tuning: the adapters start at zero and
# train alone with the head, so they take larger steps than fine-tuning
# every weight does (MiniLM: 1e-4). On the sentiment split (rank 8, 2
# epochs) 1e-3 scored 0.8388 and 2e-3 0.8435, against 0.8521 for every
# weight at 1e-4 (bench/lora.py).
LORA_LEARNING_RATE = 2e-3
# How the adapters' file lists what it holds, beside the arrays.
_INDEX = "index.json"


def check_lora_rank(rank):
    """Raises `ValueError` unless `rank` is a positive int (or None)."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"`lora_rank` must be a positive integer (the adapters' rank), or None "
                         f"for full fine-tuning. Received: lora_rank={rank!r}")


def projections(backbone):
    """The attention and feed-forward projections of `backbone`'s blocks."""
    blocks = getattr(backbone, "blocks", None)
    if not blocks:
        raise ValueError(f"LoRA adapters go on the projections of a backbone's blocks; "
                         f"{type(backbone).__name__} has no `blocks`.")
    return [layer for block in blocks for layer in block._flatten_layers()
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))]


def weights_digest(variables):
    """SHA-256 of the variables' shapes and values, in order."""
    digest = hashlib.sha256()
    for variable in variables:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(json.dumps([list(value.shape), str(value.dtype)]).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def enable_lora(model, rank, base):
    """Trains `model` (a task with a `backbone`) through rank-`rank`
    adapters: Keras's `enable_lora` on every projection of the backbone's
    blocks, every other backbone weight frozen, the head left trainable.

    Args:
        model: the task, built, not yet compiled.
        rank: the adapters' rank, a positive int.
        base: the name of the pretrained weights (a preset or checkpoint),
            recorded with their SHA-256 in `model.lora`, so a checkpoint of
            the adapters resumes only onto the same base.

    Returns:
        `model`, with `model.lora` = `{"rank", "base", "base_sha256"}`.
    """
    check_lora_rank(rank)
    if getattr(model, "backbone", None) is None:
        raise ValueError(f"LoRA adapters go on a task's backbone; {type(model).__name__} "
                         "has none. Fine-tune it whole (lora_rank=None).")
    if getattr(model, "lora", None):
        raise ValueError(f"LoRA adapters are already enabled on this model: {model.lora}.")
    adapted = projections(model.backbone)
    digest = base_digest(model)
    for variable in model.backbone.weights:
        variable.trainable = False
    for layer in adapted:
        layer.enable_lora(rank)
    set_untracked(model, lora={"rank": rank, "base": str(base), "base_sha256": digest})
    return model


def lora_layers(model):
    return [layer for layer in model._flatten_layers() if getattr(layer, "lora_enabled", False)]


def base_digest(model):
    """SHA-256 of `model`'s frozen base: its backbone's weights without
    the adapters, as `enable_lora` pinned them."""
    adapters = {id(v) for layer in lora_layers(model)
                for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    return weights_digest([v for v in model.backbone.weights if id(v) not in adapters])


def merged_weights(model):
    """`model.get_weights()` with each adapter merged into its kernel and
    dropped: the weights of the same model built without adapters."""
    merged, adapters = {}, set()
    for layer in lora_layers(model):
        merged[id(layer._kernel)] = keras.ops.convert_to_numpy(layer.kernel)
        adapters |= {id(layer.lora_kernel_a), id(layer.lora_kernel_b)}
    return [merged[id(v)] if id(v) in merged else keras.ops.convert_to_numpy(v)
            for v in model.weights if id(v) not in adapters]


def _state_variables(model):
    """`{"model": [...], "optimizer": [...]}`: what a checkpoint holds, the
    trainable variables alone for a LoRA model (its base is frozen)."""
    optimizer = getattr(model, "optimizer", None)
    weights = model.trainable_variables if getattr(model, "lora", None) else model.weights
    return {"model": list(weights),
            "optimizer": [] if optimizer is None else list(optimizer.variables)}


def training_state_variables(model):
    """The variables `save_training_state` writes (to size its file)."""
    return [v for group in _state_variables(model).values() for v in group]


def state_path(model, path):
    """Where `save_training_state` writes for `path` (a `.weights.h5`
    name): `path` itself, or for a LoRA model `.adapters.npz` in its place."""
    path = Path(path)
    if not getattr(model, "lora", None):
        return path
    return path.with_name(path.name.removesuffix(".weights.h5") + ".adapters.npz")


def save_training_state(model, path):
    """Writes what resuming `model` needs: `save_weights` (the weights and
    the optimizer's state) to `path`, or for a LoRA model its adapters, head
    and their optimizer state, with the base they adapt (`model.lora`), to
    `state_path(model, path)`. Returns the path written."""
    path = state_path(model, path)
    if not getattr(model, "lora", None):
        model.save_weights(str(path))
        return path
    arrays, index = {}, {"lora": model.lora}
    for group, variables in _state_variables(model).items():
        index[group] = [[v.path, list(v.shape)] for v in variables]
        for number, variable in enumerate(variables):
            arrays[f"{group}_{number}"] = keras.ops.convert_to_numpy(variable)
    arrays[_INDEX] = np.frombuffer(json.dumps(index).encode(), np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def load_training_state(model, path):
    """Reads what `save_training_state` wrote into `model` (built, its
    optimizer built), refusing adapters of another base or another model
    with a `ValueError` that names the difference."""
    path = state_path(model, path)
    if not getattr(model, "lora", None):
        model.load_weights(str(path))
        return
    with np.load(path, allow_pickle=False) as stored:
        index = json.loads(stored[_INDEX].tobytes().decode())
        theirs = index.get("lora") or {}
        # The weights the model holds now, not what enable_lora recorded.
        ours = base_digest(model)
        if theirs.get("base_sha256") != ours:
            raise ValueError(
                f"{path} holds LoRA adapters of the base {theirs.get('base')!r} (weights SHA-256 "
                f"{str(theirs.get('base_sha256'))[:12]}...); this model's base is "
                f"{model.lora['base']!r} ({ours[:12]}...).")
        for group, variables in _state_variables(model).items():
            listed = index.get(group, [])
            # Shapes in order: a second instance of the same network names
            # its layers with other numbers.
            if [list(v.shape) for v in variables] != [shape for _, shape in listed]:
                raise ValueError(f"{path} holds the {group} variables of another network "
                                 f"({len(listed)} of them; this one has {len(variables)}).")
            for number, variable in enumerate(variables):
                variable.assign(stored[f"{group}_{number}"])
