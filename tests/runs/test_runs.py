"""Dataset-scale runs (issue 11): torchrun sharding equals one process; killed runs resume."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rrm_plugin.cli.main import main
from tests.cli.conftest import expect_user_error
from tests.runs.driver import BATCH, N_IMAGES, commands, write_images

DRIVER = Path(__file__).with_name("driver.py")
ROOT = DRIVER.parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_driver(out: Path, images: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                     "--master-port", str(free_port())]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([*launcher, str(DRIVER), str(out), "--images", str(images), *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def same_json(a: Path, b: Path) -> None:
    assert json.loads(a.read_text()) == json.loads(b.read_text()), (a, b)


def same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert set(x) == set(y)
    for key in x:
        assert torch.equal(x[key], y[key]), key


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("runs") / "images")


def run_in_process(out: Path, images: Path, *only: str) -> None:
    for name, argv in commands(out, images).items():
        if not only or name in only:
            assert main(argv) == 0, name


@pytest.mark.slow
def test_two_torchrun_processes_give_exactly_the_one_process_results(tmp_path, images):
    two = run_driver(tmp_path / "two", images, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout
    run_in_process(tmp_path / "one", images)
    one, two = tmp_path / "one", tmp_path / "two"
    for name in ("faithfulness/faithfulness.json", "eval.json", "features/features.json",
                 "features/cards.json", "lens/lens.json"):
        same_json(one / name, two / name)
    for name in ("baselines.safetensors", "lens/lens_tensors.safetensors"):
        same_tensors(one / name, two / name)
    assert not (one / "chunks").exists() and not (two / "chunks").exists()  # removed after success


def chunk_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("."))


def test_killed_run_resumes_to_the_uninterrupted_numbers(tmp_path, images, capsys):
    killed = run_driver(tmp_path / "killed", images, "--only", "faithfulness",
                        "--kill-after", "4", "--signal", "SIGKILL")
    assert killed.returncode == -9, killed.stderr[-3000:]
    chunks = tmp_path / "killed" / "chunks"
    left = chunk_files(chunks)
    # Predicted labels (2 chunks), correct images (1), then 1 of the 2 faithfulness chunks.
    assert len(left) == 4 and not (tmp_path / "killed" / "faithfulness").exists()
    for path in left:  # complete files only
        load_file(str(path))
    run_in_process(tmp_path / "killed", images, "faithfulness")
    assert "1 chunks computed, 4 read back" in capsys.readouterr().out
    run_in_process(tmp_path / "whole", images, "faithfulness")
    same_json(tmp_path / "killed" / "faithfulness" / "faithfulness.json",
              tmp_path / "whole" / "faithfulness" / "faithfulness.json")
    assert not chunks.exists()


def baselines_argv(out: Path, images: Path, *extra: str) -> list[str]:
    return ["baselines", "--images", str(images), "--batch-size", str(BATCH), "--out",
            str(out / "b.safetensors"), "--chunks", str(out / "chunks"), *extra]


def test_ctrl_c_leaves_complete_chunks_and_the_rerun_gives_the_exact_median(
        tmp_path, images, capsys, monkeypatch):
    import os
    import signal

    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.runs.chunks import ChunkStore
    from rrm_plugin.workflows.inputs import dataset_images
    from rrm_plugin.workflows.workspace import load_workspace

    save = ChunkStore.save

    def interrupted(self, *args, **kwargs):
        path = save(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the first chunk
        return path

    monkeypatch.setattr(ChunkStore, "save", interrupted)
    # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: install it for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(baselines_argv(tmp_path, images)) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(chunk_files(tmp_path / "chunks")) == 1
    assert not (tmp_path / "b.safetensors").exists()
    monkeypatch.setattr(ChunkStore, "save", save)
    capsys.readouterr()
    assert main(baselines_argv(tmp_path, images)) == 0
    assert f"{N_IMAGES // BATCH - 1} chunks computed, 1 read back" in capsys.readouterr().out
    # The gathered median equals the median over all images in one batch (no median of medians).
    ws = load_workspace(model=None, release="rrm-digits-vit")
    whole = compute_baselines(ws.model, ws.saes, dataset_images([str(images)], ws.model).images,
                              batch_size=N_IMAGES, progress=False)
    whole.save(tmp_path / "whole.safetensors")
    same_tensors(tmp_path / "b.safetensors", tmp_path / "whole.safetensors")


def test_changed_settings_never_mix_with_old_chunks(tmp_path, images, capsys):
    import shutil

    from PIL import Image

    images = shutil.copytree(images, tmp_path / "images")  # changed in place below
    assert main(baselines_argv(tmp_path, images, "--keep-chunks")) == 0
    old = chunk_files(tmp_path / "chunks")
    assert len(old) == N_IMAGES // BATCH
    capsys.readouterr()
    argv = baselines_argv(tmp_path, images, "--keep-chunks", "--statistic", "mean",
                          "--no-progress")
    assert main(argv) == 0
    assert f"{N_IMAGES // BATCH} chunks computed, 0 read back" in capsys.readouterr().out
    new = [p for p in chunk_files(tmp_path / "chunks") if p not in old]
    assert len(new) == len(old)
    # A chunk of the old settings under the new name, and a truncated chunk: one-line errors.
    new[0].write_bytes(old[0].read_bytes())
    expect_user_error(capsys, argv, "was written for another run")
    new[0].write_bytes(b"\x00" * 10)
    expect_user_error(capsys, argv, "is corrupt .*delete it to recompute that chunk")
    # Other image content under the same file names (one pixel changed) is another run too.
    first = sorted(images.glob("*.png"))[0]
    image = Image.open(first)
    image.putpixel((0, 0), tuple(255 - v for v in image.getpixel((0, 0))))
    image.save(first)
    assert main(baselines_argv(tmp_path, images, "--no-progress")) == 0
    assert f"{N_IMAGES // BATCH} chunks computed, 0 read back" in capsys.readouterr().out
