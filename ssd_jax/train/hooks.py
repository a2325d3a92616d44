"""What a person sees of a training run, at the edges of the loop: the progress bar, the metric
history (metrics.jsonl, TensorBoard), the evaluations' AP picture, the final parameters and the
training curve. Process 0 alone writes them."""

from __future__ import annotations

import os
import time

import numpy as np
import tqdm
from absl import logging

from ssd_jax import workdir as workdir_lib
from ssd_jax.checkpoint import save_params


class Report:
    """The progress bar and the metric history of a run (nothing when not ``enabled``)."""

    def __init__(self, workdir: str, *, total: int, start: int, progress: bool, enabled: bool):
        self.log_file = workdir_lib.MetricLog(workdir) if enabled else None
        self.bar = tqdm.tqdm(total=total, initial=start, desc="training", unit="step",
                             disable=not (progress and enabled), dynamic_ncols=True)
        self.window_start, self.window_images = time.perf_counter(), 0

    def advance(self, images: int) -> None:
        """One step of ``images`` (the global batch) done."""
        self.window_images += images
        self.bar.update(1)

    def log(self, step: int, metrics: dict) -> dict:
        """Logs a step's scalars with the images/s since the last log -> those scalars."""
        metrics = dict(metrics)
        metrics["images_per_second"] = self.window_images / (time.perf_counter() - self.window_start)
        self.window_start, self.window_images = time.perf_counter(), 0
        if self.log_file is not None:
            self.log_file(step, metrics)
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['learning_rate']:.2g}",
                             img_s=f"{metrics['images_per_second']:.0f}")
        return metrics

    def evaluated(self, step: int, results: dict) -> dict:
        if self.log_file is not None:
            self.log_file(step, results)
        return results

    def close(self) -> None:
        self.bar.close()


def evaluator(config, model_config, source, workdir: str):
    """``evaluate(params, step) -> metrics`` on the data set's evaluation split; each evaluation
    also draws the per-class AP picture (class_ap.png)."""
    from ssd_jax.evaluation import datasets as evaluation
    from ssd_jax.evaluation import plots

    def evaluate(params, step):
        metrics, evaluator_, _, _ = evaluation.evaluate_split(params, model_config, source,
                                                              batch_size=config.eval_batch_size)
        per_class = {name: metrics[f"AP/{name}"] for name in evaluator_.class_names}
        plots.plot_class_ap(per_class, os.path.join(workdir, "class_ap.png"), mean_ap=metrics["voc_mAP"],
                            title=f"step {step}, all-point AP")
        logging.info("step %d: VOC07 mAP %.4f, VOC mAP %.4f", step, metrics["voc07_mAP"], metrics["voc_mAP"])
        return {k: v for k, v in metrics.items() if np.isfinite(v)}

    return evaluate


def write_final_outputs(workdir: str, params, model_config, metadata: dict) -> None:
    """params/ (the final parameters, for detect, evaluate.py and export, with the class names)
    and training_curve.png."""
    from ssd_jax.evaluation import plots

    save_params(os.path.join(workdir, "params"), params, model_config, metadata=metadata, overwrite=True)
    plots.plot_training_curve(os.path.join(workdir, workdir_lib.HISTORY_FILE),
                              os.path.join(workdir, "training_curve.png"))
