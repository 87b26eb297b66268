"""Runs every dataset-level command on a few digits images, as one process or under torchrun.

`python tests/runs/driver.py OUT --images DIR` (one process) or
`python -m torch.distributed.run --nproc-per-node 2 tests/runs/driver.py OUT --images DIR`
(two): both write the same files under OUT when sharding is right. `--only CMD` runs one command;
`--kill-after N --signal SIG` sends SIG to this process right after its N-th chunk file is
written (the kill-and-resume test).
"""

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

N_IMAGES = 8
BATCH = 4


def write_images(folder: Path, *, n: int = N_IMAGES, size: int = 24) -> Path:
    """`n` seeded random RGB images of the digits model's size, unlabelled (predicted classes
    stand in for labels, so every image counts as correctly classified)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def commands(out: Path, images: Path) -> dict[str, list[str]]:
    common = ["--batch-size", str(BATCH), "--chunks", str(out / "chunks")]
    img = ["--images", str(images)]
    return {
        "faithfulness": ["faithfulness", *img, "--methods", "rrm", "random", "--out",
                         str(out / "faithfulness"), *common],
        "baselines": ["baselines", *img, "--out", str(out / "baselines.safetensors"), *common],
        "eval-saes": ["eval-saes", *img, "--out", str(out / "eval.json"), *common],
        "features": ["features", *img, "--k", "3", "--no-progress",
                     "--out", str(out / "features"), *common],
        "lens": ["lens", *img, "--permutations", "5", "--random-repeats", "1",
                 "--random-shared-seeds", "2", "--n-probe-images", "8", "--no-progress",
                 "--out", str(out / "lens"), *common],
    }


def kill_after(n: int, sig: int) -> None:
    from rrm_plugin.runs.chunks import ChunkStore

    save, count = ChunkStore.save, [0]

    def saving(self, *args, **kwargs):
        path = save(self, *args, **kwargs)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), sig)
        return path

    ChunkStore.save = saving


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--kill-after", type=int, default=None)
    parser.add_argument("--signal", default="SIGKILL")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one process group for all commands
        torch.distributed.init_process_group(backend="gloo")
    from rrm_plugin.cli.main import main as rrm

    if args.kill_after is not None:
        kill_after(args.kill_after, getattr(signal, args.signal))
    for name, argv in commands(args.out, args.images).items():
        if args.only is None or name in args.only:
            code = rrm(argv)
            if code:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
