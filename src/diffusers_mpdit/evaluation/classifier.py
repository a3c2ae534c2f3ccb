"""Quality of a class-conditional model on a small labelled dataset, judged by a classifier trained on the real data.

Inception features (FID) describe ImageNet photographs, not 32x32 greyscale clothes; for the bundled Fashion-MNIST
model a small CNN trained on the real training split is the judge instead: A_gen is its accuracy on generated images
(the requested class is the label), and the Frechet distance is taken in its penultimate feature space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..sampling import SamplingConfig
from ..training.data import center_crop_arr, image_to_tensor, pad_to
from .frechet import feature_statistics, frechet_distance


@dataclass
class LabelledImages:
    """Images in [-1, 1], `(N, C, H, W)`, with integer labels `(N,)` and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]


def load_split(
    data_dir: str, split: str, resolution: int = 32, channels: int = 1, preprocessing: str = "pad"
) -> LabelledImages:
    """One split of a `datasets` folder with `image` and `label` (a ClassLabel) columns, prepared as for training.

    Args:
        data_dir (`str`): A dataset folder or name, e.g. the output of `examples/prepare_fashion_mnist.py`.
        split (`str`): `train` or `test`.
        resolution (`int`): Image side after preparation.
        channels (`int`): 1 (greyscale) or 3 (RGB).
        preprocessing (`str`): `pad` (black borders, 28 -> 32) or `center_crop` (ADM's crop).
    """
    from datasets import load_dataset

    if preprocessing not in ("pad", "center_crop"):
        raise ValueError(f"`preprocessing` must be 'pad' or 'center_crop', got {preprocessing!r}.")
    dataset = load_dataset(data_dir, split=split)
    prepare = pad_to if preprocessing == "pad" else center_crop_arr
    images = torch.stack([image_to_tensor(prepare(image, resolution), channels) for image in dataset["image"]])
    names = dataset.features["label"].names
    return LabelledImages(images, torch.tensor(dataset["label"]), list(names))


class SmallImageClassifier(nn.Module):
    """A VGG-style CNN for small images: three conv stages, then a `feature_dim` embedding and the class logits.

    Args:
        in_channels (`int`): Image channels.
        num_classes (`int`): Number of classes.
        feature_dim (`int`): Width of the penultimate layer, the space of the Frechet distance.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()

        def stage(c_in, c_out):
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]

        self.body = nn.Sequential(*stage(in_channels, 16), *stage(16, 32), *stage(32, 64), nn.AdaptiveAvgPool2d(2))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class ClassifierScorer:
    """A classifier trained on the real training split, with the real test split's feature statistics.

    Build it with `ClassifierScorer.fit(train, test)`; then `reference()` gives A_real and the real train-vs-test
    distance, and `score_pipeline()` / `score_images()` the same figures for generated images.
    """

    def __init__(self, classifier: SmallImageClassifier, train: LabelledImages, test: LabelledImages):
        self.classifier, self.train, self.test = classifier.eval(), train, test
        self.names = list(train.names)
        self.test_stats = feature_statistics(self.features(test.images))

    def save(self, path: str) -> None:
        """Writes what scoring generated images needs (the classifier, the class names, the test split's feature
        statistics), so that other processes can judge with the same classifier.

        Args:
            path (`str`): The file to write (with `torch.save`), replaced atomically.
        """
        from ..atomic import atomic_path

        classifier = self.classifier
        state = {
            "classifier": classifier.state_dict(),
            "shape": (classifier.body[0].in_channels, classifier.head.out_features, classifier.head.in_features),
            "names": self.names,
            "test_stats": [torch.from_numpy(s) for s in self.test_stats],
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: str) -> ClassifierScorer:
        """A scorer written by `save`: `score_images` and `score_pipeline` work; `reference` needs the real splits.

        Args:
            path (`str`): The file.
        """
        state = torch.load(path, weights_only=True)
        in_channels, num_classes, feature_dim = state["shape"]
        classifier = SmallImageClassifier(in_channels, num_classes, feature_dim)
        classifier.load_state_dict(state["classifier"])
        scorer = cls.__new__(cls)
        scorer.classifier, scorer.train, scorer.test = classifier.eval(), None, None
        scorer.names = list(state["names"])
        scorer.test_stats = tuple(s.numpy() for s in state["test_stats"])
        return scorer

    @classmethod
    def fit(
        cls,
        train: LabelledImages,
        test: LabelledImages,
        epochs: int = 3,
        batch_size: int = 128,
        learning_rate: float = 2e-3,
        seed: int = 0,
        random_flip: bool = True,
    ) -> ClassifierScorer:
        """Trains a `SmallImageClassifier` on `train` (Adam, random horizontal flips as augmentation).

        Args:
            train, test (`LabelledImages`): The real splits.
            epochs (`int`): Passes over `train`.
            batch_size (`int`): Images per step.
            learning_rate (`float`): Adam's step size, decayed to zero on a cosine.
            seed (`int`): Seeds the initialisation, the order and the flips.
            random_flip (`bool`, defaults to `True`): Mirror a random half of each batch; off for data whose
                classes change when mirrored (digits).
        """
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"`epochs` and `batch_size` must be >= 1, got {epochs} and {batch_size}.")
        batch_size = min(batch_size, len(train.labels))
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = SmallImageClassifier(train.images.shape[1], len(train.names))
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        steps = epochs * (len(train.labels) // batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        model.train()
        with tqdm(total=steps, desc="classifier") as progress:
            for _ in range(epochs):
                order = torch.randperm(len(train.labels), generator=generator)
                for i in range(len(train.labels) // batch_size):
                    index = order[i * batch_size : (i + 1) * batch_size]
                    images = train.images[index]
                    flips = (torch.rand(len(index), generator=generator) < 0.5) & random_flip
                    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
                    loss = nn.functional.cross_entropy(model(images), train.labels[index])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    progress.update()
                    progress.set_postfix(loss=f"{loss.item():.3f}")
        return cls(model, train, test)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
        return np.concatenate([self.classifier.features(b).numpy() for b in images.split(batch_size)])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return torch.cat([self.classifier(b).argmax(-1) for b in images.split(batch_size)])

    def reference(
        self, num_samples: int, seed: int = 0, noise_levels: tuple[float, ...] = (), half_mirrored: bool = False
    ) -> dict:
        """A_real (accuracy on the whole real test split), and the Frechet distance between `num_samples` class-balanced
        real training images and the real test split: the yardstick for generated sets of the same size.

        Args:
            num_samples (`int`): Real training images in the yardstick.
            seed (`int`): Picks them.
            noise_levels (`tuple[float, ...]`): Also the distance after adding Gaussian pixel noise of these standard
                deviations (fractions of the pixel range, then 8-bit rounding), as `FD_train_test_noisy`: how far a
                faint speckle alone moves real images in this feature space.
            half_mirrored (`bool`): Also the distance after mirroring a random half of the images left to right, as
                `FD_train_test_half_mirrored`: the set a model trained with random flips learns to make, so the
                lowest distance it can reach where orientation matters (Fashion-MNIST's shoes point left).
        """
        if self.train is None:
            raise ValueError("this scorer was loaded without the real splits: build it with `fit` for a reference")
        accuracy = (self.predict(self.test.images) == self.test.labels).float().mean().item()
        images = self.train.images[balanced_indices(self.train.labels, num_samples, seed)]
        distance = frechet_distance(*feature_statistics(self.features(images)), *self.test_stats)
        result = {"A_real": accuracy, "FD_train_test": distance, "num_samples": num_samples}
        generator = torch.Generator().manual_seed(seed)
        noisy_distances = {}
        for level in noise_levels:
            noisy = (images + 2 * level * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
            noisy = ((noisy + 1) * 127.5).round() / 127.5 - 1
            noisy_distances[f"{level:g}"] = frechet_distance(
                *feature_statistics(self.features(noisy)), *self.test_stats
            )
        if noisy_distances:
            result["FD_train_test_noisy"] = noisy_distances
        if half_mirrored:
            # A generator of its own, so which half is mirrored does not depend on `noise_levels`.
            mirror_generator = torch.Generator().manual_seed(seed)
            mirror = (torch.rand(len(images), generator=mirror_generator) < 0.5).view(-1, 1, 1, 1)
            mixed = torch.where(mirror, images.flip(-1), images)
            result["FD_train_test_half_mirrored"] = frechet_distance(
                *feature_statistics(self.features(mixed)), *self.test_stats
            )
        return result

    def score_images(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """A_gen (the fraction classified as the requested class), per-class accuracy and the Frechet distance to the
        real test split, for images in [-1, 1]."""
        predicted = self.predict(images)
        correct = (predicted == labels).float()
        per_class = {name: correct[labels == c].mean().item() for c, name in enumerate(self.names)}
        distance = frechet_distance(*feature_statistics(self.features(images)), *self.test_stats)
        return {"A_gen": correct.mean().item(), "FD": distance, "per_class": per_class, "num_samples": len(labels)}

    def score_pipeline(
        self,
        pipeline,
        num_samples: int,
        sampling: SamplingConfig,
        batch_size: int = 100,
        class_ids: Sequence[int] | None = None,
    ) -> dict:
        """Generates `num_samples` class-balanced images with `pipeline` and scores them. Image `i` has class
        `i % classes` and the noise of `sampling.generators([i])`; outputs are rounded to 8 bits, as saved images and
        the real data are.

        Args:
            pipeline (`MPDiTPipeline`): A pipeline that draws the dataset's classes, with the scheduler to use.
            num_samples (`int`): Images to generate.
            sampling (`SamplingConfig`): Steps, guidance (None: the pipeline's defaults) and seed; the caller builds
                the scheduler (`sampling.make_scheduler`).
            batch_size (`int`): Images per pipeline call.
            class_ids (`list[int]`, *optional*): The pipeline's id of each of the judge's classes (default: the
                same ids), e.g. `range(10, 20)` for classes a fine-tune added after ten old ones.
        """
        labels = torch.arange(num_samples) % len(self.names)
        class_ids = torch.arange(len(self.names)) if class_ids is None else torch.as_tensor(list(class_ids))
        if len(class_ids) != len(self.names):
            raise ValueError(f"`class_ids` must give one id per class of the judge ({len(self.names)}).")
        call = sampling.call_kwargs(pipeline)
        pipeline.set_progress_bar_config(disable=True)
        images = []
        for start in tqdm(range(0, num_samples, batch_size), desc="sampling"):
            batch = range(start, min(start + batch_size, num_samples))
            out = pipeline(
                class_labels=class_ids[labels[batch.start : batch.stop]].tolist(),
                generator=sampling.generators(batch),
                output_type="np",
                **call,
            ).images
            pixels = np.round(out * 255).clip(0, 255) / 127.5 - 1.0
            images.append(torch.from_numpy(pixels).float().permute(0, 3, 1, 2))
        return self.score_images(torch.cat(images), labels)


def balanced_indices(labels: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
    """`num_samples` indices cycling through the classes, drawn without replacement within each class."""
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    pools = {int(c): (labels == c).nonzero().flatten() for c in classes}
    pools = {c: pool[torch.randperm(len(pool), generator=generator)] for c, pool in pools.items()}
    counts = {int(c): 0 for c in classes}
    out = []
    for i in range(num_samples):
        c = int(classes[i % len(classes)])
        if counts[c] >= len(pools[c]):
            raise ValueError(f"`num_samples` {num_samples} needs more images of class {c} than the split has")
        out.append(pools[c][counts[c]])
        counts[c] += 1
    return torch.stack(out)
