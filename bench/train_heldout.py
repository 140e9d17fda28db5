"""Benchmark helper: train a CIFAR ResNet from scratch on the TRAIN split less the held-out reward split.

The shared checkpoints were trained on every TRAIN image, so a search's reward split (held-out TRAIN images) is
memorised by them (resnet20: about 97% there against 88% on test). This trains the same architecture with the
fine-tuning recipe (`amc.train.finetune`, `FinetuneConfig`: SGD with Nesterov momentum, warm-up then cosine,
crop + flip) on the TRAIN images outside `split_train_val(n, --val-size, --seed)`, the split a search with the
same `--val-size` and `--seed` rewards on, so that split is a true validation set for the trained model. The
last epoch's weights are written as a checkpoint in the shared checkpoints' format (no epoch is chosen on the
held-out images). Resumes an interrupted run. Writes `bench/results/train_heldout_<model>.json` and `.md`.

    python bench/train_heldout.py --model resnet20 --data-dir DIR --epochs 30 --out /tmp/resnet20-heldout.pt
"""

from __future__ import annotations

import time
from pathlib import Path

import common  # bench/common.py; puts the repository on sys.path

from amc.data.datasets import load_dataset
from amc.data.split import split_train_val
from amc.data.transforms import normalize
from amc.engine.measure import accuracy
from amc.fileio import atomic_torch_save
from amc.models.trained import load_trained_model
from amc.train.config import FinetuneConfig
from amc.train.finetune import finetune, last_checkpoint_path

# the shared checkpoints' input normalisation (../shared/docs/DATA.md)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main(argv: list[str] | None = None, results: str | Path = common.RESULTS) -> None:
    parser = common.parser("train_heldout", __doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--out", required=True, help="the checkpoint to write")
    common.add_common_args(parser, val_size=True, threads=2)
    args = common.parse_args(parser, argv)
    data = load_dataset(args.dataset, args.data_dir)
    val_size = common.resolve_val_size(args)
    train_idx, val_idx = split_train_val(len(data.train), val_size, args.seed)
    trained = load_trained_model(args.model, None, dataset=data)
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, num_threads=args.threads, device="cpu")
    started = time.monotonic()
    out = Path(args.out)
    work = out.with_suffix(".best.pt")  # finetune's best-epoch file; the benchmark keeps the last epoch instead
    result = finetune(trained.module, data.train.subset(train_idx), data.train.subset(val_idx), MEAN, STD, config,
                      out=work, resume=last_checkpoint_path(work).is_file())
    seconds = time.monotonic() - started
    state = {k: v.cpu() for k, v in trained.module.state_dict().items()}
    atomic_torch_save({"state_dict": state, "arch": args.model, "num_classes": data.num_classes, "mean": MEAN,
                 "std": STD, "note": f"trained from scratch on TRAIN less split_train_val(val_size={val_size}, "
                                     f"seed={args.seed}) for {args.epochs} epochs (bench/train_heldout.py)"}, out)
    model = trained.module.eval()

    def accuracy_on(images: object) -> float:
        return accuracy(model, normalize(images.images, MEAN, STD), images.labels)[0]

    held_out = accuracy_on(data.train.subset(val_idx))
    train_acc = accuracy_on(data.train.subset(train_idx[:5000]))
    test = accuracy_on(data.test)
    summary = common.summary("train_heldout", args, model=args.model, epochs=args.epochs, lr=args.lr,
                             val_size=val_size, seconds=seconds, test_accuracy=test, held_out_accuracy=held_out,
                             train_accuracy_5000=train_acc, history=result.history)
    lines = [f"# {args.model} trained from scratch without the reward split", "",
             f"{common.header(summary)}", "",
             "| epochs | held-out reward split (%) | first 5,000 training images (%) | test (%) | minutes |",
             "|---|---|---|---|---|",
             f"| {args.epochs} | {100 * held_out:.2f} | {100 * train_acc:.2f} | {100 * test:.2f} | {seconds / 60:.1f} |"]
    common.write(f"train_heldout_{args.model}", summary, lines, results)


if __name__ == "__main__":
    main()
