"""spa.pretrain: the backbone's file name and the thread count it trains on, whoever asks for it."""

from __future__ import annotations

import pytest
import torch

from spa import pretrain
from spa.pretrain import PRETRAIN_THREADS, PretrainConfig, pretrained_backbone


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # the stubbed epochs never step the optimizer
def test_pretraining_runs_on_one_thread_and_gives_the_callers_setting_back(tmp_path, monkeypatch) -> None:
    """A driver on torch's default thread count and a trial on one must train the same weights (on 2 threads they
    differed), so training sets one thread and restores the caller's; the recorded thread count is taken inside the
    training loop, which this test replaces with a stub that also counts the epochs.
    (Trained for real, 1 thread gave the same weights bit for bit in two runs, 2 threads other ones.)"""
    seen: list[int] = []
    monkeypatch.setattr(pretrain, "train_one_epoch", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(pretrain, "load_splits", _tiny_splits)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        path = pretrained_backbone(PretrainConfig(epochs=3), tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert PRETRAIN_THREADS == 1 and seen == [1, 1, 1]
    assert path.parent == tmp_path / "backbones" and path.is_file()
    state = torch.load(path)
    assert state["fc.weight"].shape == (5, 512)  # the stand-in source's five classes: what was trained was saved


def test_the_file_name_follows_the_recipe() -> None:
    """Settings that change the weights change the name; the same settings give the same name."""
    key = pretrain._cache_key
    assert key(PretrainConfig()) == key(PretrainConfig())
    names = {
        key(PretrainConfig(**change)) for change in ({}, {"epochs": 3}, {"lr": 0.1}, {"seed": 1}, {"arch": "resnet34"})
    }
    assert len(names) == 5


def _tiny_splits(dataset: str, seed: int):
    """The handwritten digits 0-4 in place of the 4,000 rendered source images: quick to load, and the stubbed epochs
    never train on them."""
    from spa.data import load_splits

    return load_splits("digits-source", seed=seed)
