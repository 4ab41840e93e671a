"""train.gather_embeddings: two gloo processes on the CPU give the loss and the gradients of one
process that sees both batches concatenated."""
import gc

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from simsearch.config import ConfigError, load
from simsearch.training.gather import gather_across_ranks
from simsearch.training.losses import build_loss_wrapper, check_loss_config

D_IN, D = 6, 4
SIZES = (8, 6)  # rank 1's batch lost two unreadable images: the gather must take unequal batches
CASES = {  # name: (overrides, steps)
    "circle": (["loss.name=circle", "loss.miner=null"], 1),
    "multi_similarity+miner": (["loss.name=multi_similarity", "loss.miner=multi_similarity"], 1),
    "multi_similarity+miner+xbm": (["loss.name=multi_similarity", "loss.miner=multi_similarity",
                                    "loss.xbm_size=32"], 2),  # the second step also compares with the memory
}


def _cfg(overrides, gather="null"):
    return load([], ["train.batch_p=4", "train.batch_k=2", "train.miner_start_epoch=0",
                     f"train.gather_embeddings={gather}", *overrides])


def _data(step):
    """Both ranks' inputs of one step, and the labels (classes shared across the two batches)."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(sum(SIZES), D_IN, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 4, 4, 2, 5])
    return x.split(SIZES), labels.split(SIZES)


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(D_IN, D)


def _run(wrapper, model, xs, labels):
    """Each step's loss, the gradient on each slice's embeddings and the model's gradient."""
    out, net = [], getattr(model, "module", model)  # DDP keeps the Linear in .module
    for x, y in zip(xs, labels):
        model.zero_grad()
        emb = [F.normalize(model(part), dim=1) for part in x]  # per part: the same bits as on each rank
        for e in emb:
            e.retain_grad()
        loss = wrapper(torch.cat(emb) if len(emb) > 1 else emb[0], torch.cat(y))
        loss.backward()
        out.append({"loss": loss.detach(), "emb_grad": [e.grad for e in emb],
                    "weight_grad": net.weight.grad.clone(), "bias_grad": net.bias.grad.clone()})
    return out


def _cases(rank, gather):
    """Every case on this rank; its DDP models are gone when this returns (see ``_worker``)."""
    results = {}
    for name, (overrides, steps) in CASES.items():
        wrapper = build_loss_wrapper(_cfg(overrides, gather), 6, D)
        wrapper.set_epoch(0)
        ddp = torch.nn.parallel.DistributedDataParallel(_model())  # averages gradients over the ranks
        xs, ys = zip(*(_data(s) for s in range(steps)))
        results[name] = _run(wrapper, ddp, [[x[rank]] for x in xs], [[y[rank]] for y in ys])
    return results


def _worker(rank, world, folder, gather):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=world)
    try:
        torch.save(_cases(rank, gather), folder / f"rank{rank}.pt")
        gc.collect()  # no DDP reducer may outlive the process group: at exit it would abort the process
        dist.barrier()  # both ranks done before either tears its group down
    finally:
        dist.destroy_process_group()


def _two_processes(folder, gather):
    """Per rank, per case: what ``_run`` returns on that rank (the loss, its own embeddings' gradient, ...)."""
    folder.mkdir()
    mp.spawn(_worker, args=(2, folder, gather), nprocs=2)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gather")
    return _two_processes(tmp / "null", "null"), _two_processes(tmp / "false", "false")


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_match_one_process_on_the_concatenated_batch(two_ranks, name):
    gathered, separate = two_ranks
    overrides, steps = CASES[name]
    wrapper = build_loss_wrapper(_cfg(overrides), 6, D)  # no process group here: one process
    wrapper.set_epoch(0)
    xs, ys = zip(*(_data(s) for s in range(steps)))
    reference = _run(wrapper, _model(), xs, ys)
    for step, ref in enumerate(reference):
        for rank in (0, 1):
            got = gathered[rank][name][step]
            torch.testing.assert_close(got["loss"], ref["loss"], atol=1e-5, rtol=1e-5)
            # DDP's average of the two ranks' model gradients = the one-process gradient
            torch.testing.assert_close(got["weight_grad"], ref["weight_grad"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["bias_grad"], ref["bias_grad"], atol=1e-5, rtol=1e-5)
            # each rank's embeddings get W x their one-process gradient, which DDP's 1/W averaging undoes
            torch.testing.assert_close(got["emb_grad"][0] / 2, ref["emb_grad"][rank], atol=1e-5, rtol=1e-5)
        # without the gather each rank's loss is that of its own batch alone
        assert not torch.allclose(separate[0][name][step]["loss"], ref["loss"], atol=1e-3)
        assert not torch.allclose(separate[0][name][step]["weight_grad"], ref["weight_grad"], atol=1e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_one_process_the_flag_changes_nothing(tmp_path, name):
    overrides, steps = CASES[name]
    xs, ys = zip(*(_data(s) for s in range(steps)))
    runs = {}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for gather in ("true", "false", "null"):
            wrapper = build_loss_wrapper(_cfg(overrides, gather), 6, D)
            wrapper.set_epoch(0)
            runs[gather] = _run(wrapper, _model(), xs, ys)
    finally:
        dist.destroy_process_group()
    assert [r["loss"].item() for r in runs["true"]] == [r["loss"].item() for r in runs["false"]]
    for a, b in zip(runs["true"], runs["false"]):
        assert torch.equal(a["weight_grad"], b["weight_grad"]) and torch.equal(a["emb_grad"][0], b["emb_grad"][0])
    assert [r["loss"].item() for r in runs["null"]] == [r["loss"].item() for r in runs["false"]]


def test_no_process_group_returns_the_inputs():
    emb, labels = torch.randn(4, D), torch.tensor([0, 0, 1, 1])
    out = gather_across_ranks(emb, labels)
    assert out[0] is emb and out[1] is labels


def test_which_losses_gather():
    assert build_loss_wrapper(_cfg(["loss.name=circle"]), 6, D).gather  # null: on (a no-op with one process)
    assert not build_loss_wrapper(_cfg(["loss.name=circle"], "false"), 6, D).gather
    for overrides in (["loss.name=arcface"], ["loss.name=cross_entropy"],
                      ["loss.name=contrastive", "data.sampler=pairs", "loss.miner=null"]):
        assert not build_loss_wrapper(_cfg(overrides), 6, D).gather  # nothing to gather: null means off
        check_loss_config(_cfg(overrides))
        with pytest.raises(ConfigError, match="train.gather_embeddings=true"):
            check_loss_config(_cfg(overrides, "true"))


def test_the_memory_must_hold_the_gathered_batch(monkeypatch):
    monkeypatch.setattr("simsearch.training.losses.world_size", lambda: 4)  # as under a 4-process launch
    overrides = ["loss.name=multi_similarity", "loss.xbm_size=16"]  # one 4x2 batch per process: 32 gathered
    with pytest.raises(ConfigError, match=r"loss.xbm_size=16 .* = 32"):
        build_loss_wrapper(_cfg(overrides), 6, D)
    assert build_loss_wrapper(_cfg(overrides, "false"), 6, D).xbm is not None
