"""bench/kd.py end to end on the tiny model: every arm trains, is scored and ends in the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import kd  # noqa: E402


def test_steps_to_reach_interpolates_between_evaluations() -> None:
    curve = [{"step": 0, "kl": 2.0}, {"step": 10, "kl": 1.0}, {"step": 20, "kl": 0.5}]
    assert kd.steps_to_reach(curve, 1.0) == 10
    assert kd.steps_to_reach(curve, 0.75) == pytest.approx(15)
    assert kd.steps_to_reach(curve, 0.4) is None
    assert kd.steps_to_reach(curve, 3.0) == 0.0


def test_mcnemar_counts_only_discordant_items() -> None:
    sft = {str(i): i < 10 for i in range(40)}
    same = dict(sft)
    assert kd.mcnemar_p(same, sft) == 1.0
    better = {str(i): i < 20 for i in range(40)}   # 10 wins, 0 losses
    assert kd.mcnemar_p(better, sft) == pytest.approx(2 * 0.5 ** 10)


@pytest.mark.slow
def test_quick_bench_runs_every_arm_and_ends_with_one_json_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "kd.py"), "--quick", "--seeds", "0", "1",
         "--arms", "sft", "fkl_zero_tail", "fkl_tail", "rkl", "--catalog", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert "held-out KL" in lines[0] and "McNemar p" in lines[0]
    assert result["seeds"] == [0, 1] and result["steps"] == 6 and result["quick"]
    assert set(result["arms"]) == {"sft", "fkl_zero_tail", "fkl_tail", "rkl"}
    for arm, seeds in result["arms"].items():
        for row in seeds.values():
            assert row["heldout_kl"] > 0 and 0 <= row["accuracy"] <= 1
            assert (row["mcnemar_p_vs_sft"] is None) == (arm == "sft")
    assert len(result["kd_vs_sft_heldout_kl_per_seed"]) == 2
    assert result["kd_vs_sft_heldout_kl"] == max(result["kd_vs_sft_heldout_kl_per_seed"])
    assert result["best_kd_arm"] in {"fkl_zero_tail", "fkl_tail", "rkl"}
    # Same init, same data and seed: the arms differ only in their objective, so do the KLs.
    kls = {seeds["0"]["heldout_kl"] for seeds in result["arms"].values()}
    assert len(kls) == 4
