"""The shapes as a TFDS builder: name ``shapes``, configs ``full`` (default, 3000/500 images) and
``tiny`` (16/8), with the features of TFDS ``voc``, so one decode function serves both. It
prepares fully offline in seconds, in ArrayRecord files (random access). Images are stored as
JPEG (quality 95, no chroma subsampling) like VOC's: PNG of these textures is 5x bigger and 10x
slower to write."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssd_jax.data.shapes.generate import CLASS_NAMES, NUM_TEST, NUM_TRAIN, encode_jpeg, example_rng, generate_example


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Split sizes of the shapes data set."""

    num_train: int = NUM_TRAIN
    num_test: int = NUM_TEST


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic detection data: 1-6 coloured circles, squares, triangles, stars and hexagons on
    textured backgrounds, exact boxes, in the feature layout of TFDS `voc`."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: 5 classes, 160-320 px images, exact boxes.',
                     '1.1.0': 'The same examples in ArrayRecord files (random access for the global order).'}
    # TFDS finds a builder's code by importlib_resources, which this environment lacks (etils'
    # optional extra); the path is only needed for checksums and metadata files, so say it here.
    code_path = tfds.core.Path(__file__)
    BUILDER_CONFIGS = [
        ShapesConfig(name='full', description=f'{NUM_TRAIN} train and {NUM_TEST} test images.'),
        ShapesConfig(name='tiny', description='16 train and 8 test images, for tests.', num_train=16, num_test=8),
    ]

    def _info(self):
        # DatasetInfo directly rather than dataset_info_from_configs, which would take any
        # README.md that appears next to this module as the description.
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                'image/filename': tfds.features.Text(),
                'image/id': tf.int64,
                'objects': tfds.features.Sequence({
                    'bbox': tfds.features.BBoxFeature(),
                    'label': tfds.features.ClassLabel(names=CLASS_NAMES),
                    'is_difficult': tf.bool,
                }),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {
            'train': self._generate_examples('train', self.builder_config.num_train),
            'test': self._generate_examples('test', self.builder_config.num_test),
        }

    def _generate_examples(self, split, num_examples):
        for index in range(num_examples):
            image, boxes, labels = generate_example(example_rng(split, index))
            yield index, {
                'image': encode_jpeg(image),
                'image/filename': f'{split}_{index:06d}.jpg',
                'image/id': index,
                'objects': {
                    'bbox': boxes[:, [1, 0, 3, 2]],  # TFDS wants (ymin, xmin, ymax, xmax)
                    'label': labels,
                    'is_difficult': np.zeros(len(labels), dtype=bool),
                },
            }


def prepare(data_dir=None, config='full'):
    """Generates the data set offline (if not already there) and returns its builder.

    Args:
      data_dir: TFDS data directory; None means TFDS's default (~/tensorflow_datasets).
      config: 'full' or 'tiny'.
    """
    builder = Shapes(config=config, data_dir=data_dir)
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f'shapes/{config}: {splits} ready in {builder.data_dir} after {time.perf_counter() - start:.1f} s')
    return builder
