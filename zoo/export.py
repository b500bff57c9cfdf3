"""Versioned SavedModel export that TF Serving loads.

TF Serving watches a model folder for integer-named version subfolders; an
export writes `folder/<next version>/` through a temporary folder that is
renamed into place only when the SavedModel is complete, so a failed export
leaves nothing half-written and a watching server never sees a partial one.
"""

from pathlib import Path

import tensorflow as tf

from zoo.publishing import new_version_directory


def checked_texts(text, max_texts, max_text_bytes):
    """`text` (a request's `(N,)` strings) once it holds at most `max_texts`
    texts of at most `max_text_bytes` bytes each; else the request fails with
    an `InvalidArgumentError` naming the limit, and the server goes on."""
    checks = [
        tf.debugging.assert_less_equal(
            tf.size(text), max_texts,
            message=f"A request holds at most {max_texts} texts (max_texts)."),
        tf.debugging.assert_less_equal(
            tf.strings.length(text), max_text_bytes,
            message=f"A text holds at most {max_text_bytes} bytes (max_text_bytes)."),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(text)


def traced_signatures(functions):
    """`{name: (function, input_signature)}` -> `{name: concrete function}`,
    each traced once, as a `tf.function` that is no attribute of the module
    being saved.

    `tf.saved_model.save` traces every `tf.function` attribute of a module
    again inside its save context (TensorFlow keys its trace cache on that
    context), so a signature declared as one was traced twice: a second
    trace of the whole network and tokenizer, about half of an export's time.
    """
    return {name: tf.function(function, input_signature=input_signature).get_concrete_function()
            for name, (function, input_signature) in functions.items()}


def export_saved_model(module, folder, signatures, version=None):
    """Saves `module` with `signatures` as `folder/<version>/`.

    Args:
        module: a `tf.Module` that tracks every variable and resource the
            signatures use.
        folder: the model folder (created if needed).
        signatures: `{name: concrete function}` (`traced_signatures`).
        version: integer version; defaults to the next free number (one
            more than the largest present, or after it when another export
            publishes that one first). A published version is never replaced.

    Returns:
        The path of the written version.
    """
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"{folder} is a file; an export goes into a model folder of numbered "
                         "versions.")
    with new_version_directory(folder, version) as (staging, publish):
        tf.saved_model.save(module, str(staging), signatures=signatures)
        return publish()
