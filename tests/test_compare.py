"""`emodarts compare` (reference vs fused search steps) and `emodarts doctor` on a machine without a GPU."""
import json

import pytest
from click.testing import CliRunner

from emodarts.cli.commands import cli


@pytest.mark.parametrize("order", [[], ["--second-order"]])
def test_compare_passes_on_cpu(tmp_path, order):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["compare", "--preset", "tiny", "--device", "cpu", "--steps", "2",
                                      "--json", str(out)] + order)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["ok"] and report["second_order"] == bool(order)
    assert set(report["rows"]) == {"loss", "logits", "weight_grad", "alpha_grad", "alpha"}
    rows = report["rows"]
    assert all(row["ok"] for row in rows.values())
    # the float64 oracle really is a separate run: float32 logits differ from it
    assert rows["logits"]["ref_vs_f64"] > 0 and rows["logits"]["fused_vs_f64"] > 0


def test_compare_fails_when_the_fused_path_is_perturbed(monkeypatch):
    from emodarts.ops import mixed_sum

    real = mixed_sum.mixed_sum_fused
    monkeypatch.setattr(mixed_sum, "mixed_sum_fused", lambda ys, alpha, index: real(ys, alpha, index) * (1 + 1e-3))
    result = CliRunner().invoke(cli, ["compare", "--preset", "tiny", "--steps", "1"])
    assert result.exit_code == 1, result.output
    assert "BEYOND TOLERANCE" in result.output
    # the reference's envelope was widened by every one-ulp rerun and still does not cover a 1e-3 error
    assert "and 4 rerun(s) from starting weights" in result.output
    fewer = CliRunner().invoke(cli, ["compare", "--preset", "tiny", "--steps", "1", "--ulp-runs", "0"])
    assert fewer.exit_code == 1 and "BEYOND TOLERANCE" in fewer.output and "rerun(s)" not in fewer.output


def test_ulp_perturbation_moves_each_weight_by_at_most_one_ulp():
    import torch

    from emodarts.engine.compare import ulp_perturbed

    state = {"w": torch.randn(4000), "d": torch.randn(300, dtype=torch.float64) * 1e-30,
             "n": torch.tensor([3, 4]), "z": torch.zeros(50)}
    out = ulp_perturbed(state, seed=7)
    assert torch.equal(out["n"], state["n"])
    for name in ("w", "d", "z"):
        v, p = state[name], out[name]
        up, down = torch.nextafter(v, torch.full_like(v, 1e30)), torch.nextafter(v, torch.full_like(v, -1e30))
        assert bool(((p == v) | (p == up) | (p == down)).all()), name
        # each of the three choices is taken about a third of the time
        for moved in (p == v, p == up, p == down):
            assert 0.2 < float(moved.double().mean()) < 0.47, name
    assert all(torch.equal(out[k], ulp_perturbed(state, seed=7)[k]) for k in state)
    assert not torch.equal(out["w"], ulp_perturbed(state, seed=8)["w"])


def test_doctor_runs_without_gpu():
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "CUDA device" in result.output and "C++ extension" in result.output
