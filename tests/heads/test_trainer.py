"""The one training loop (`rcnn.heads.trainer.Trainer`) and its one checkpoint rule, on a
small least-squares problem: a linear "head" on a "trunk" whose first layer is frozen."""

import numpy as np
import pytest
import torch
from torch import nn

from rcnn.errors import ModelError, TrainingDiverged
from rcnn.heads.sgd import SGDConfig
from rcnn.heads.trainer import Trainer

X = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32))
Y = X @ torch.arange(1.0, 6.0) + 0.5


class _Regression(Trainer):
    title = "regression"
    terms = ("mse",)

    def __init__(self, config, checkpoint=None, meta=None):
        super().__init__(config, checkpoint)
        self._meta = meta or {"problem": "y = x . (1..5) + 0.5"}
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5), nn.Linear(5, 5))
        self.head = nn.Linear(5, 1)

    def meta(self):
        return self._meta

    def batch(self, it):
        return np.random.default_rng([self.config.seed, it]).choice(64, 16, replace=False)

    def loss(self, batch):
        pred = self.head(self.trunk(X[batch])).squeeze(1)
        mse = ((pred - Y[batch]) ** 2).mean()
        return {"loss": mse, "mse": mse}

    def fit(self, iterations):
        return self.run({"trunk": self.trunk, "head": self.head}, self.trunk, iterations)


def _config(**kw):
    return SGDConfig(**{"lr": 0.01, "frozen": ("0.",), "checkpoint_every": 3, **kw})


def _weights(t):
    return {f"{n}.{k}": v.clone() for n, m in (("trunk", t.trunk), ("head", t.head)) for k, v in m.state_dict().items()}


def test_trains_the_unfrozen_layers_only_and_hands_everything_back():
    t = _Regression(_config())
    before = _weights(t)
    t.fit(30)
    after = _weights(t)
    assert t.history_["mse"][-1] < 0.5 * t.history_["mse"][0]
    assert torch.equal(before["trunk.0.weight"], after["trunk.0.weight"])  # frozen
    assert not torch.equal(before["trunk.2.weight"], after["trunk.2.weight"])
    assert torch.equal(before["trunk.1.running_mean"], after["trunk.1.running_mean"])  # frozen batch norm
    assert not t.trunk.training and all(p.requires_grad for p in t.trunk.parameters())
    assert len(t.history_["loss"]) == 30 and t.resumed_from_ == 0


def test_a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
    straight = _Regression(_config(lr_step=4)).fit(10)
    _Regression(_config(lr_step=4), tmp_path / "c.pt").fit(6)  # stopped after iteration 6
    resumed = _Regression(_config(lr_step=4), tmp_path / "c.pt").fit(10)
    assert resumed.resumed_from_ == 6
    assert resumed.history_ == straight.history_
    for k, v in _weights(straight).items():
        assert torch.equal(v, _weights(resumed)[k]), k


def test_one_checkpoint_rule_unreadable_or_damaged_starts_over_another_setup_is_an_error(tmp_path, capsys):
    fresh = _Regression(_config()).fit(4)
    path = tmp_path / "c.pt"
    for damage in (b"not a checkpoint", None):
        if damage is None:  # readable, right setup, a module's entry missing
            _Regression(_config(), path).fit(3)
            state = torch.load(path, weights_only=True)
            del state["head"]
            torch.save(state, path)
        else:
            path.write_bytes(damage)
        again = _Regression(_config(), path).fit(4)
        assert again.resumed_from_ == 0 and again.history_ == fresh.history_
        assert "starting over" in capsys.readouterr().err
    with pytest.raises(ModelError, match="another regression setup"):
        _Regression(_config(), path, meta={"problem": "another"}).fit(4)


def test_a_non_finite_loss_stops_with_one_line_and_writes_no_checkpoint_after_it(tmp_path):
    path = tmp_path / "c.pt"
    t = _Regression(_config(lr=1e6, checkpoint_every=100), path)
    with pytest.raises(TrainingDiverged, match=r"regression training diverged at iteration \d+"):
        t.fit(50)
    assert not path.exists()
