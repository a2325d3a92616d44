"""The training input: each process's part of every global batch, resuming at the exact example."""

from __future__ import annotations

import jax


def train_batches(config, source, model_config, *, start_step: int, examples_seen: int, local_batch_size: int):
    """An endless iterator of this process's numpy training batches from ``start_step`` on.

    Sources with random access give the global order (the same global batches on any cluster);
    data read in order (TFDS TFRecord files) is read by each process from its own files,
    skipping the ``examples_seen`` it already trained on.
    """
    from ssd_jax.data import pipeline  # TensorFlow is imported only by code that trains

    augment_options = {"zoom_out_probability": config.zoom_out_probability, "max_zoom_out": config.max_zoom_out,
                       "crop_probability": config.crop_probability, "photometric": config.get("photometric", True)}
    indexed = source.indexed("train")
    if indexed is not None:
        return pipeline.as_numpy(pipeline.global_train_dataset(
            indexed, global_batch_size=config.batch_size, image_size=model_config.image_size,
            max_boxes=config.max_boxes, seed=config.seed, start_step=start_step, process_index=jax.process_index(),
            process_count=jax.process_count(), use_difficult=source.train_on_difficult,
            augment_options=augment_options))
    if jax.process_count() > 1 and jax.process_index() == 0:
        print(f"note: {source.name} is stored as TFRecord files, read in order: each process reads its own part of "
              f"the split, so the global batches depend on the number of processes. Prepared as ArrayRecord (tfds "
              f"build ... --file_format=array_record) they would not.")
    examples = source.examples("train", process_index=jax.process_index(), process_count=jax.process_count(),
                               shuffle_files=True, decode=False)
    return pipeline.as_numpy(pipeline.train_dataset(
        examples, batch_size=local_batch_size, image_size=model_config.image_size, max_boxes=config.max_boxes,
        seed=config.seed, shuffle_buffer=config.shuffle_buffer, start_index=examples_seen,
        augment_options=augment_options))
