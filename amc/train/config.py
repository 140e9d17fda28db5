"""Fine-tuning settings (`FinetuneConfig`), the one source of their defaults: a recipe for CIFAR ResNets
(SGD with Nesterov momentum, linear warm-up then cosine decay, as in He et al., "Deep Residual Learning",
CVPR 2016, with the cosine schedule of Loshchilov and Hutter, "SGDR", ICLR 2017)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FinetuneConfig:
    """Fine-tuning settings.

    Attributes:
        epochs: passes over the training set.
        batch_size: images per optimizer step, summed over all processes (each of W torchrun
            processes takes batch_size / W per step), so results do not depend on W.
        lr: peak learning rate, tuned for batch_size 128; scale it linearly with batch_size
            (e.g. 0.1 for 256).
        momentum: SGD momentum, used with Nesterov's update.
        weight_decay: L2 penalty on weight matrices and kernels; BatchNorm parameters and biases
            (every parameter with at most one dimension) get none.
        warmup_epochs: the learning rate rises linearly from lr / warm-up steps to lr over this many
            epochs (at most half the run), then follows a cosine to 0 at the end of the last epoch.
        label_smoothing: label smoothing of the cross-entropy, in [0, 1).
        distill_alpha: weight a of knowledge distillation from a teacher, in [0, 1]:
            loss = (1 - a) * CE + a * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
        temperature: the distillation temperature T (> 0).
        augment: random 4-pixel-padded crop + horizontal flip (`augment_crop_flip`) for images in memory, a
            random-resized crop + flip for image files (`amc.data.imagefiles`); applied only to images at least
            AUGMENT_MIN_SIZE (32) pixels high; smaller ones are never augmented.
        seed: seeds the data order, the augmentation and torch's global RNG of every epoch.
        num_threads: torch CPU threads to use; None keeps torch's current setting.
        workers: processes decoding image files ahead of training (None: one per core but one, at most 8; 0: in
            the training process); unused for data held in memory. The batches do not depend on it.
        device: "auto" (the first CUDA device if there is one, else the CPU), "cpu", "cuda" or "cuda:N"; under
            torchrun with CUDA each process uses cuda:LOCAL_RANK.
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    distill_alpha: float = 0.0
    temperature: float = 4.0
    augment: bool = True
    seed: int = 0
    num_threads: int | None = None
    workers: int | None = None
    device: str = "auto"
