"""`torchrun -m pixdex train` with 2 CPU processes (gloo) trains the model that one process trains with
the same global batch: same weights and same optimizer moments (the gradients), for both losses; a DDP
run killed after a checkpoint resumes to the same end."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pixdex.errors import PixdexError
from pixdex.training import distributed
from pixdex.training import state as st
from pixdex.training.demo_data import generate
from pixdex.training.trainer import TrainOptions, train

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

TINY = "tiny-vit"  # LayerNorm only: nothing (unlike BatchNorm) depends on how the batch is split
# --grad-clip 0: clipping would rescale a wrongly scaled gradient back to the right norm and hide it.
# Every weight is compared, the attention key biases too: their true gradient is exactly zero (softmax
# ignores a shift of all keys) and the trainer zeroes the computed one, which is rounding noise that Adam
# turned into steps of up to lr differing between summation orders (1.5e-5 apart before it did).
OPTIONS = dict(epochs=2, batch_size=8, accum=2, lr=1e-4, warmup=1, grad_clip=0.0, val_fraction=0.2)
ATOL = 1e-5


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "data"
    generate(out, n=40, seed=11, image_size=48)  # 32 training images: 2 steps of 2 x 8 per epoch
    return out


def _cli_args(demo, out, loss):
    args = ["train", "--data", str(demo / "manifest.csv"), "--model", TINY, "--out", str(out)]
    args += ["--loss", loss, "--workers", "1", "--device", "cpu", "--save-every", "1"]
    for k, v in OPTIONS.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


def _one_process(demo, out, loss):
    opts = TrainOptions(
        data=demo / "manifest.csv",
        model=TINY,
        out=out,
        loss=loss,
        workers=1,
        device="cpu",
        progress=False,
        save_every=1,
        **OPTIONS,
    )
    return train(opts)


def _torchrun(target, args, timeout=300):
    """``torchrun --standalone --nproc_per_node 2 TARGET ARGS`` (a free port is picked by torchrun)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        cmd + target + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _assert_same_run(a, b):
    """Same weights, same temperature, same optimizer moments (so the same gradients), same outputs,
    same metrics."""
    from safetensors.torch import load_file

    from pixdex.encoders.build import build_model
    from pixdex.encoders.encoder import load_encoder
    from pixdex.encoders.registry import get_config

    wa, wb = load_file(a / st.MODEL_FILE), load_file(b / st.MODEL_FILE)
    assert wa.keys() == wb.keys()
    torch.manual_seed(0)  # the trainer's seeded initialisation
    init = build_model(get_config(TINY)).state_dict()
    moved = max(float((wa[k] - init[k]).abs().max()) for k in wa if k != "logit_scale")
    assert moved > 10 * ATOL  # training moved the weights well beyond the tolerance
    for k in wa:
        x, y = wa[k], wb[k]
        assert torch.allclose(x, y, atol=ATOL, rtol=0), (k, float((x - y).abs().max()))
    ea, eb = load_encoder(str(a), device="cpu"), load_encoder(str(b), device="cpu")
    pixels = np.random.default_rng(0).standard_normal((8, 3, ea.image_size, ea.image_size))
    texts = ["a red circle", "a small blue star at the top left", "two green squares"]
    assert (
        np.abs(
            ea.encode_images(pixels.astype(np.float32)) - eb.encode_images(pixels.astype(np.float32))
        ).max()
        <= ATOL
    )
    assert np.abs(ea.encode_texts(texts) - eb.encode_texts(texts)).max() <= ATOL
    ra, rb = (torch.load(d / st.RESUME_FILE, weights_only=True) for d in (a, b))
    assert ra["step"] == rb["step"] and ra["done"] and rb["done"]
    for k in ra["loss"]:
        assert torch.allclose(ra["loss"][k], rb["loss"][k], atol=ATOL, rtol=0), k
    sa, sb = ra["optimizer"]["state"], rb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(sa[i][moment], sb[i][moment], atol=ATOL, rtol=0), (i, moment)
    ma, mb = (json.loads((d / st.METRICS_FILE).read_text()) for d in (a, b))
    assert len(ma["epochs"]) == len(mb["epochs"]) == OPTIONS["epochs"]
    for ea, eb in zip(ma["epochs"], mb["epochs"]):
        assert ea["train_loss"] == pytest.approx(eb["train_loss"], rel=1e-5)
        assert ea["val"] == eb["val"]  # held-out recall, computed by process 0


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_two_processes_train_the_one_process_model(demo, tmp_path, loss):
    ref = tmp_path / "one"
    _one_process(demo, ref, loss)
    out = tmp_path / "ddp"
    res = _torchrun(["-m", "pixdex"], _cli_args(demo, out, loss))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "x 2 processes" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    _assert_same_run(out, ref)


KILL_AFTER_FIRST_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    from pixdex.training import state
    real = state.save_resume
    def save_then_die(out, s):
        real(out, s)
        if not s["done"]:
            os.kill(os.getpid(), signal.SIGKILL)  # process 0 dies right after its first checkpoint
    state.save_resume = save_then_die
    from pixdex.cli import main
    sys.argv = ["pixdex"] + sys.argv[1:]
    main()
""")


def test_killed_ddp_run_resumes_to_the_same_end(demo, tmp_path):
    out = tmp_path / "killed"
    args = _cli_args(demo, out, "siglip")
    script = tmp_path / "killable.py"
    script.write_text(KILL_AFTER_FIRST_CHECKPOINT)
    res = _torchrun([str(script)], args)
    assert res.returncode != 0, res.stdout + res.stderr  # torchrun reports the lost process
    saved = torch.load(out / st.RESUME_FILE, weights_only=True)
    assert saved["step"] == 1 and not saved["done"]
    assert not (out / st.MODEL_FILE).exists()  # no epoch finished

    res = _torchrun(["-m", "pixdex"], args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming at step 1" in res.stderr
    ref = tmp_path / "straight"
    _one_process(demo, ref, "siglip")
    _assert_same_run(out, ref)


# ----------------------------------------------------------------------------- pieces


def test_global_batch_is_split_into_contiguous_disjoint_slices():
    batch = np.random.default_rng(0).permutation(48)[:12]
    for world in (1, 2, 3, 4, 6, 12):
        parts = [distributed.Dist(world, r, r).shard(batch) for r in range(world)]
        assert all(len(p) == len(batch) // world for p in parts)
        assert np.array_equal(np.concatenate(parts), batch)  # rank order is the batch order


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, distributed.Dist(1, 0, 0)),
        ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, distributed.Dist(4, 3, 1)),
        ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, distributed.Dist(1, 0, 0)),
    ],
)
def test_torchrun_environment_is_read(env, expected):
    got = distributed.from_env(env)
    assert got == expected and got.enabled == (expected.world_size > 1) and got.is_main == (got.rank == 0)


@pytest.mark.parametrize(
    "env", [{"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, {"WORLD_SIZE": "two", "RANK": "0"}]
)
def test_bad_torchrun_environment_is_one_error(env):
    with pytest.raises(PixdexError, match="torchrun environment"):
        distributed.from_env(env)


def test_each_process_takes_its_local_gpu():
    two = distributed.Dist(2, 1, 1)
    assert distributed.process_device(two, "cuda") == "cuda:1"
    assert distributed.process_device(two, "cpu") == "cpu"
    assert distributed.process_device(distributed.Dist(), "cuda:3") == "cuda:3"
    with pytest.raises(PixdexError, match="cuda:LOCAL_RANK"):
        distributed.process_device(two, "cuda:0")
